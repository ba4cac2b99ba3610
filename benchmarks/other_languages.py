"""Spoken queries in languages other than English: how many does voice search refuse to read as words (and so
search by sound, with a message), per language? Speaks the same five sentences (three searches, a greeting and
a question) in each language with espeak-ng's voice for it, and reports the share searched by sound and what
was heard. A refusal is the right outcome: the model reads only English.

    python benchmarks/other_languages.py [MODEL]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
from pathlib import Path

from mmodal.data.audio import read_audio
from mmodal.model import MModalModel
from mmodal.search import searchable

SENTENCES = {
    "fr": [
        "un cercle rouge à gauche d'un carré bleu",
        "deux petits triangles verts",
        "une grande étoile jaune",
        "bonjour, comment ça va",
        "quel temps fait-il demain",
    ],
    "de": [
        "ein roter Kreis links von einem blauen Quadrat",
        "zwei kleine grüne Dreiecke",
        "ein großer gelber Stern",
        "guten Tag, wie geht es dir",
        "wie wird das Wetter morgen",
    ],
    "es": [
        "un círculo rojo a la izquierda de un cuadrado azul",
        "dos triángulos verdes pequeños",
        "una estrella amarilla grande",
        "hola, qué tal",
        "qué tiempo hará mañana",
    ],
    "it": [
        "un cerchio rosso a sinistra di un quadrato blu",
        "due piccoli triangoli verdi",
        "una grande stella gialla",
        "ciao, come stai",
        "che tempo farà domani",
    ],
    "nl": [
        "een rode cirkel links van een blauw vierkant",
        "twee kleine groene driehoeken",
        "een grote gele ster",
        "hallo, hoe gaat het",
        "wat voor weer wordt het morgen",
    ],
    "sv": [
        "en röd cirkel till vänster om en blå kvadrat",
        "två små gröna trianglar",
        "en stor gul stjärna",
        "hej, hur mår du",
        "hur blir vädret i morgon",
    ],
    "pl": [
        "czerwone koło na lewo od niebieskiego kwadratu",
        "dwa małe zielone trójkąty",
        "duża żółta gwiazda",
        "dzień dobry, jak się masz",
        "jaka będzie jutro pogoda",
    ],
    "pt": [
        "um círculo vermelho à esquerda de um quadrado azul",
        "dois triângulos verdes pequenos",
        "uma estrela amarela grande",
        "olá, tudo bem",
        "como vai estar o tempo amanhã",
    ],
    "ru": [
        "красный круг слева от синего квадрата",
        "два маленьких зелёных треугольника",
        "большая жёлтая звезда",
        "привет, как дела",
        "какая завтра будет погода",
    ],
    "cmn": ["蓝色方块左边的红色圆圈", "两个绿色的小三角形", "一颗大的黄色星星", "你好，你好吗", "明天天气怎么样"],
    "ja": [
        "青い四角の左にある赤い丸",
        "小さな緑の三角が二つ",
        "大きな黄色い星",
        "こんにちは、お元気ですか",
        "明日の天気はどうですか",
    ],
    "hi": [
        "नीले वर्ग के बाईं ओर लाल वृत्त",
        "दो छोटे हरे त्रिकोण",
        "एक बड़ा पीला तारा",
        "नमस्ते, आप कैसे हैं",
        "कल मौसम कैसा रहेगा",
    ],
}


def speak(text: str, language: str) -> tuple:
    with tempfile.TemporaryDirectory() as folder:
        wav = Path(folder) / "clip.wav"
        subprocess.run(["espeak-ng", "-v", language, "-w", str(wav), text], check=True, capture_output=True)
        return read_audio(str(wav))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="shapes")
    args = parser.parse_args()
    model = MModalModel.from_pretrained(args.model)
    report, refused, total = {}, 0, 0
    for language, sentences in SENTENCES.items():
        transcripts = model.transcribe([speak(s, language) for s in sentences])
        by_sound = [not searchable(model, t) for t in transcripts]
        refused, total = refused + sum(by_sound), total + len(by_sound)
        report[language] = {
            "searched_by_sound": round(sum(by_sound) / len(by_sound), 3),
            "heard": [t.text for t in transcripts],
            "confidence": [round(t.confidence, 2) for t in transcripts],
        }
        print(f"{language:4s} searched by sound {sum(by_sound)}/{len(by_sound)}  heard {report[language]['heard']}")
    print(f"all  searched by sound {refused}/{total} ({refused / total:.0%})")
    print(json.dumps(report, ensure_ascii=False))


if __name__ == "__main__":
    main()
