"""Speech figures of a model on a spoken test split: word error rate by noise level, spoken queries searched
as users' are (transcript when heard clearly, else sound), by sound alone and typed. The evaluation's other
parts (questions, foils) are left out, as they do not depend on the audio tower.

    python benchmarks/speech_eval.py MODEL TEST_DIR
"""

import json
import sys

from mmodal.data.dataset import read_dataset
from mmodal.evaluate import evaluate
from mmodal.model import MModalModel

dataset = read_dataset(sys.argv[2])
dataset.questions, dataset.foils = [], []
report = evaluate(MModalModel.from_pretrained(sys.argv[1]), dataset)
print(json.dumps({"speech": report["speech"], "typed_reranked": report["search"]["reranked"]["all"]}, indent=1))
