"""The training loop: object slots and the slot reasoner, or the towers' contrastive alignment with mined and
foil negatives, speech and answers, or answers alone."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from encoders.tokenizer import build_tokenizer, known_words
from kernels.contrastive import contrastive_loss, multi_positive_nce
from mmodal.config import ModelConfig, dense_config, tiny_config
from mmodal.data.dataset import DatasetFormatError, read_dataset
from mmodal.data.generate import generate_shapes
from mmodal.data.vqa import read_vqa
from mmodal.model import MModalModel
from mmodal.shapes.semantics import COLORS, COUNT_WORDS, RELATIONS, SHAPES, SIZES
from mmodal.training import distributed
from mmodal.training.answer_recipe import (
    answer_modules,
    answer_recipe_losses,
    answer_stage_bounds,
    build_answer_model,
)
from mmodal.training.checkpoint import find_checkpoint, load_trainer_state, save_checkpoint
from mmodal.training.config import TrainConfig
from mmodal.training.data import Batch, ShapesTrainingData
from mmodal.training.language_recipe import LanguageRecipe
from mmodal.training.mining import NeighbourBank
from mmodal.training.slot_recipe import (
    SlotTrainingData,
    build_slot_model,
    embed_ground_truth,
    freeze_towers,
    slot_losses,
    stage_bounds,
    stage_of,
)
from mmodal.training.speech_recipe import (
    SPEECH_MODULES,
    SpeechTrainingData,
    build_speech_model,
    speech_datasets,
    speech_losses,
)
from mmodal.training.vqa_data import QuestionAnswerData

log = logging.getLogger(__name__)

DATA_PARALLEL_RECIPES = ("full", "clip")
# Recipes written as one object each: it builds the model, names the modules it trains, bounds its stages and
# gives each step's losses over a SlotTrainingData.
RECIPE_OBJECTS = {recipe.name: recipe for recipe in (LanguageRecipe(),)}

MODEL_DIR = "model"
TRAIN_CONFIG_FILE = "train_config.json"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA GPU is visible; use --device cpu")
    return torch.device(name)


def tokenizer_corpus(dataset) -> list[str]:
    """Every text of the training split, plus the whole vocabulary, so each word gets its own token."""
    words = [*SHAPES, *(s + "s" for s in SHAPES), *COLORS, *SIZES, *COUNT_WORDS, *RELATIONS, "object", "objects"]
    texts = [c.text for c in dataset.captions] + [q.text for q in dataset.queries]
    texts += [f"{q.question} {q.answer}" for q in dataset.questions]
    return texts + [" ".join(words)] * 50


def vqa_files(config: TrainConfig):
    """The VQAv2 files the settings name, read; None when they name none."""
    if not (config.vqa_questions or config.vqa_annotations or config.vqa_images):
        return None
    if not (config.vqa_questions and config.vqa_annotations and config.vqa_images):
        raise ValueError("VQAv2 data needs all three of --vqa-questions, --vqa-annotations and --vqa-images")
    return read_vqa(config.vqa_questions, config.vqa_annotations, config.vqa_images)


def ensure_dataset(config: TrainConfig):
    """Reads the training split, generating it first when the folder holds none (the vqa recipe reads VQAv2
    files instead when given)."""
    if config.recipe == "vqa":
        return vqa_files(config) or read_dataset(config.data)
    folder = Path(config.data)
    if config.recipe == "speech":
        if not (folder / "dataset.json").is_file() and not any(folder.glob("*/dataset.json")):
            log.info("no spoken training data in %s: generating %d spoken splits", folder, config.speech_parts)
            for part in range(config.speech_parts):
                generate_shapes(
                    folder / f"part-{part + 1}",
                    n=400,
                    seed=config.seed + 2000 + part,
                    split="train",
                    with_speech=True,
                    n_queries=2000,
                )
        return speech_datasets(folder)
    if not (folder / "dataset.json").is_file():
        log.info("no training data in %s: generating %d Shapes images", folder, config.n_images)
        speech = config.speech and config.recipe == "full"  # only the towers' recipe trains the audio tower
        generate_shapes(folder, n=config.n_images, seed=config.seed + 1000, split="train", with_speech=speech)
    dataset = read_dataset(folder)
    if dataset.info.get("split") != "train":
        raise DatasetFormatError(f"{folder} is a {dataset.info.get('split')!r} split; train on a train split only")
    return dataset


def _schedule(config: TrainConfig):
    def factor(step: int) -> float:
        if config.recipe == "slots":
            start, length = stage_bounds(step, config)
        elif config.recipe == "answers":
            start, length = answer_stage_bounds(step, config)
        elif config.recipe in RECIPE_OBJECTS:
            start, length = RECIPE_OBJECTS[config.recipe].stage_bounds(step, config)
        else:
            start, length = 0, config.steps
        step, warmup = step - start, min(config.warmup_steps, max(1, length // 5))
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, length - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def compute_losses(model: MModalModel, batch: Batch, audio, config: TrainConfig) -> dict[str, torch.Tensor]:
    """All training losses for one step (see TrainConfig for the weights). Under data-parallel training this
    process encodes ``batch.local``; the contrastive loss runs over every process's rows (the global batch)."""
    device = model.device
    local = list(batch.local_rows())
    n = len(local)
    full = config.recipe == "full"
    foil_rows = [i for i, r in enumerate(local) if batch.foils[r]] if full else []
    audio_rows, clips, audio_statements = audio if audio else ([], [], [])
    texts = (
        [batch.texts[r] for r in local]
        + [batch.foils[local[i]] for i in foil_rows]
        + [s.text() for s in audio_statements]
    )
    ids, mask = model.tokenize(texts)
    text_tokens, moe_aux = model.text_tokens(ids, mask)
    text_emb = model.embed_text_tokens(text_tokens, mask)
    image_tokens = model.image_tokens(batch.pixels.to(device))
    image_emb = model.embed_image_tokens(image_tokens)
    scale = model.logit_scale.exp().clamp(max=100.0)
    positives = batch.positives.to(device)  # (global, global)
    all_texts = distributed.gather_rows(text_emb[:n])
    losses = {
        "nce": contrastive_loss(distributed.gather_rows(image_emb), all_texts, scale, positives).loss,
        "moe": moe_aux,
    }
    if foil_rows:
        rows = torch.tensor(foil_rows, device=device)
        similarity = image_emb[rows] @ all_texts.t()  # (F, global): only the foil rows' logits are needed here
        foil_sim = (image_emb[rows] * text_emb[n : n + len(foil_rows)]).sum(-1, keepdim=True)  # (F, 1)
        logits = torch.cat([similarity, foil_sim], dim=1) * scale
        global_rows = torch.tensor([local[i] for i in foil_rows], device=device)
        foil_pos = torch.cat([positives[global_rows], torch.zeros_like(foil_sim, dtype=torch.bool)], dim=1)
        losses["foil"] = config.foil_loss_weight * multi_positive_nce(logits, foil_pos)
    qa_rows = [i for i, r in enumerate(local) if batch.questions[r]][: config.vqa_per_step] if full else []
    if qa_rows and config.vqa_loss_weight > 0:
        q_ids, q_mask = model.tokenize([batch.questions[local[i]][0] for i in qa_rows])
        a_ids, a_mask = model.tokenize([batch.questions[local[i]][1] for i in qa_rows])
        rows = torch.tensor(qa_rows, device=device)
        vqa, vqa_aux = model.answer_loss(image_tokens[rows], q_ids, q_mask, a_ids, a_mask)
        losses["vqa"] = config.vqa_loss_weight * vqa
        losses["moe"] = losses["moe"] + vqa_aux
    if clips:
        waves, lengths = model.preprocess_audio(clips)
        audio_emb = model.embed_audio(waves, lengths)  # (A, D)
        start = n + len(foil_rows)
        spoken_emb = text_emb[start:]
        same_text = torch.tensor(
            [[a.text() == b.text() for b in audio_statements] for a in audio_statements], device=device
        )
        # Speech learns to land where its text and its images already are; while the audio tower is young
        # its gradients would only shake the text and image towers, so they do not flow back into them.
        spoken_emb = spoken_emb.detach()
        loss = contrastive_loss(audio_emb, spoken_emb, scale, same_text).loss
        loss = loss + (1 - (audio_emb * spoken_emb).sum(dim=-1)).mean()  # dense pull towards its own text
        if full:
            scenes = [batch.scenes[r] for r in local]
            scenes_ok = torch.tensor([[s.holds(sc) for sc in scenes] for s in audio_statements], device=device)
            loss = loss + multi_positive_nce(scale * audio_emb @ image_emb.detach().t(), scenes_ok)
        losses["audio"] = config.audio_loss_weight * loss
    return losses


def embed_pictures(model: MModalModel, data: ShapesTrainingData, indices: np.ndarray) -> torch.Tensor:
    """The first design's image embeddings of training pictures, unflipped, for mining."""
    was_training = model.training
    model.eval()
    pixels = data.pixels(indices, np.zeros((len(indices), 2), dtype=bool)).to(model.device)
    embeddings = model.embed_image_tokens(model.image_tokens(pixels))
    model.train(was_training)
    return embeddings


def _routing_health(model: MModalModel) -> dict[str, str]:
    """The MoE core's health in the last step: the least-used expert's share over uniform, router entropy."""
    if not model.config.text.n_routed_experts or not model.language.router_stats:
        return {}  # the core has not run yet (the slots recipe's perception stage reads no text)
    load = model.language.expert_load()
    return {
        "moe_min_share": f"{float(load.min() * len(load)):.2f}",
        "router_entropy": f"{model.language.router_entropy():.2f}",
    }


def answer_losses(model: MModalModel, pixels: torch.Tensor, questions, answers, config: TrainConfig) -> dict:
    """The "vqa" recipe's step: prefix language modelling of the answers, plus the MoE balance loss."""
    if config.blind:  # the question-only baseline: every image is the same blank (mean-colour) one
        pixels = torch.zeros_like(pixels)
    q_ids, q_mask = model.tokenize(questions)
    a_ids, a_mask = model.tokenize(answers)
    loss, aux = model.answer_loss(model.image_tokens(pixels), q_ids, q_mask, a_ids, a_mask)
    return {"vqa": config.vqa_loss_weight * loss, "moe": aux}


def build_model(config: TrainConfig, dataset) -> MModalModel:
    if config.recipe in RECIPE_OBJECTS:
        return RECIPE_OBJECTS[config.recipe].build(config)
    if config.recipe == "speech":
        return build_speech_model(config, dataset.vocabulary, dataset.bigram())
    if config.recipe == "answers":
        return build_answer_model(config)
    if config.recipe == "slots":
        if config.model == "tiny" and not config.init_from:  # tests: fresh tiny towers under the slots
            return build_slot_model(config, build_model(replace(config, recipe="full"), dataset))
        return build_slot_model(config)
    if config.init_from:
        return MModalModel.from_pretrained(config.init_from, allow_new_modules=True)
    model_config = {"tiny": tiny_config, "dense": dense_config}.get(config.model, ModelConfig)()
    corpus = [f"{q.question} {q.answer}" for q in dataset.questions] if config.recipe == "vqa" else None
    corpus = corpus or tokenizer_corpus(dataset)
    tokenizer = build_tokenizer(corpus, vocab_size=model_config.text.vocab_size)
    model_config.text.known_words = known_words(corpus)
    return MModalModel(model_config, tokenizer)


def train(config: TrainConfig, resume: bool = False, for_steps: int | None = None) -> Path | None:
    """Trains a model as ``config`` says and writes it to ``config.out/model``; returns that folder.

    With ``for_steps``, stops after that many steps of this call at a checkpoint (returns None unless the
    run is finished), so a long schedule can be trained in pieces with ``resume``.
    """
    run = Path(config.out)
    run.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    ranks = distributed.start(device)
    if ranks.world > 1:
        if config.recipe not in DATA_PARALLEL_RECIPES:
            raise ValueError(
                f"torchrun runs the {' and '.join(DATA_PARALLEL_RECIPES)} recipes; "
                f"train {config.recipe!r} in one process"
            )
        if device.type == "cuda":
            device = torch.device("cuda", ranks.local_rank)
            torch.cuda.set_device(device)
    if device.type == "cpu":
        torch.set_num_threads(config.workers)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    if not ranks.is_main:
        distributed.barrier()  # the first process generates a missing dataset; the others then read it
    dataset = ensure_dataset(config)
    if ranks.is_main and ranks.world > 1:
        distributed.barrier()
    checkpoint = find_checkpoint(run) if resume else None
    if resume and checkpoint is None:
        log.warning("no checkpoint in %s: starting from scratch", run)
    speech = SpeechTrainingData(dataset, config.seed) if config.recipe == "speech" else None
    if checkpoint:
        model = MModalModel.from_pretrained(checkpoint, device)
    else:
        model = build_model(config, speech or dataset).to(device)
    if speech is not None:
        model.eval()
        speech.embed_texts(model)
    model.train()
    if config.recipe == "vqa":
        data = QuestionAnswerData(dataset, model.config.image.image_size)
    elif config.recipe == "slots":
        freeze_towers(model)
        data = SlotTrainingData(dataset, model.input_size)
    elif config.recipe == "speech":
        freeze_towers(model, SPEECH_MODULES)
        data = speech
    elif config.recipe in RECIPE_OBJECTS:
        freeze_towers(model, RECIPE_OBJECTS[config.recipe].modules)
        data = SlotTrainingData(dataset, model.input_size)
    elif config.recipe == "answers":
        freeze_towers(model, answer_modules(config))
        data = SlotTrainingData(dataset, model.input_size)
        vqa = vqa_files(config)
        asked = QuestionAnswerData(vqa, model.input_size) if vqa else None
    else:
        data = ShapesTrainingData(dataset, model.config.image.image_size)
    trained = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    decay = [p for name, p in trained if p.ndim >= 2 and "embed" not in name]
    no_decay = [p for name, p in trained if not (p.ndim >= 2 and "embed" not in name)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config))
    contrastive_step = distributed.TrainingStep(model, compute_losses)
    if ranks.world > 1:
        # Unused parameters: a step without questions or clips leaves the answer and audio heads out.
        contrastive_step = DistributedDataParallel(
            contrastive_step,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    bank = NeighbourBank()
    step = 0
    if checkpoint:
        state = load_trainer_state(checkpoint, optimizer)
        step = state["step"]
        rng.bit_generator.state = state["rng"]
        bank.pairs = np.asarray(state.get("mined_pairs", []), dtype=np.int64).reshape(-1, 2)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(config), last_epoch=step - 1)
        log.info("resumed from %s at step %d", checkpoint, step)
    config.save(run / TRAIN_CONFIG_FILE)
    use_amp = device.type == "cuda"
    started, samples = time.time(), 0
    stop_at = min(config.steps, step + for_steps) if for_steps else config.steps
    bar_off = None if ranks.is_main else True
    with tqdm(total=config.steps, initial=step, desc=f"train {config.recipe}", unit="step", disable=bar_off) as bar:
        while step < stop_at:
            if config.recipe == "vqa":
                pixels, _, questions, answers = data.batch(config.batch_size, rng)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    losses = answer_losses(model, pixels.to(device), questions, answers, config)
                samples += len(questions)
            elif config.recipe == "answers":
                picks = rng.choice(len(data), size=config.batch_size, replace=False)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    losses = answer_recipe_losses(model, data, picks, step, config, rng, asked)
                samples += config.batch_size
            elif config.recipe in RECIPE_OBJECTS:
                picks = rng.choice(len(data), size=config.batch_size, replace=False)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    losses = RECIPE_OBJECTS[config.recipe].losses(model, data, picks, step, config, rng)
                samples += config.batch_size
            elif config.recipe == "speech":
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    losses = speech_losses(model, data, config.batch_size, rng, config)
                samples += config.batch_size
            elif config.recipe == "slots":
                mining = stage_of(step, config) != "perception" and config.mine_every
                if mining and step % config.mine_every == 0:
                    bank.refresh(lambda idx: embed_ground_truth(model, data, idx), data.scenes, rng)
                mined = bank.sample(config.mined_per_batch, rng) if mining else np.zeros(0, np.int64)
                fresh = rng.choice(len(data), size=config.batch_size - len(mined), replace=False)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    losses = slot_losses(model, data, np.concatenate([fresh, mined]), step, config, rng)
                samples += config.batch_size
            else:
                if config.recipe == "full" and config.mine_every and step % config.mine_every == 0 and step > 0:
                    bank.refresh(lambda idx: embed_pictures(model, data, idx), data.scenes, rng)
                mined = bank.sample(config.mined_per_batch, rng) if config.recipe == "full" else np.zeros(0, np.int64)
                # Every process draws the same global batch and encodes its own rows of it.
                fresh = rng.choice(len(data), size=config.batch_size * ranks.world - len(mined), replace=False)
                batch = data.batch(np.concatenate([fresh, mined]), rng, config.recipe, ranks.rows(config.batch_size))
                audio = None
                if data.spoken and config.speech:
                    picks, clips = data.audio_batch(config.audio_batch_size * ranks.world, rng)
                    share = ranks.rows(config.audio_batch_size)
                    picks, clips = picks[share], clips[share]
                    audio = (picks, clips, [data.spoken_statements[p] for p in picks])
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    losses = contrastive_step(batch, audio, config)
                samples += len(batch.texts)
            total = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in trained], 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            if step % config.log_every == 0 or step == config.steps:
                rate = samples / (time.time() - started)
                bar.set_postfix(
                    loss=f"{total.item():.3f}",
                    **{k: f"{v.item():.3f}" for k, v in losses.items()},
                    **_routing_health(model),
                    samples_s=f"{rate:.0f}",
                )
            if (step % config.checkpoint_every == 0 or step == stop_at) and ranks.is_main:
                state = {"step": step, "rng": rng.bit_generator.state, "mined_pairs": bank.pairs.tolist()}
                save_checkpoint(run, model, optimizer, state)
                if _routing_health(model):
                    log.info(
                        "step %d: expert share %s (uniform %.3f), router entropy %.2f of its maximum",
                        step,
                        " ".join(f"{x:.3f}" for x in model.language.expert_load().tolist()),
                        1 / model.config.text.n_routed_experts,
                        model.language.router_entropy(),
                    )
    distributed.stop()
    if not ranks.is_main:
        return None
    if step < config.steps:
        log.info("stopped at step %d of %d; continue with --resume", step, config.steps)
        return None
    final = run / MODEL_DIR
    model.eval()
    model.save_pretrained(final, dtype=getattr(torch, config.final_dtype))
    config.save(final / TRAIN_CONFIG_FILE)
    log.info("trained %d steps in %.1f min; model in %s", step, (time.time() - started) / 60, final)
    return final
