"""Training, evaluating and loading UViM's two stages (`uvim`), as tasks for the shared loop (`train.run`).

Stage I trains on (input, target) pairs of a `dense.DenseData`. Stage II needs the guiding code of every training
target: it is computed once, with the trained oracle, when stage II starts, and kept in the disk cache (`cache`) for
the next stage II on that oracle (UViM computes it on the fly because it augments its data). Stage II may see each
training example and its mirror image (`mirror`, UViM's random horizontal flip): the mirrored examples get their own
codes, cached the same way. Both stages use AdamW with the loop's warm-up and cosine schedule.

Evaluation during training runs over the whole test split (`uvim_eval`) and reports the task's metric
(`dense_tasks`), the codebook usage of the codes involved, and, for stage II, the token accuracy against the oracle's
codes and the held-out loss (training's loss on the test split's codes: the curve that says whether stage II has
converged).

Legend: B batch, N examples, S code length, K codebook size.
"""

import dataclasses
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax

from fsq_ref import dense_tasks, vq
from fsq_ref.common.errors import InputError, from_record
from fsq_ref.data import cache, datasets, dense
from fsq_ref.evaluation import metrics
from fsq_ref.evaluation.uvim_eval import (
    CodedData,
    code_usage,
    codes_of,
    heldout_loss,
    oracle_predict,
    picture,
    run_over,
    score,
    stage2_predict,
)
from fsq_ref.training import checkpoint, precision
from fsq_ref.training.train import apply_updates, optimizer, quantizer_outputs
from fsq_ref.uvim import (
    GuidingCodeLM,
    LMConfig,
    Oracle,
    OracleConfig,
    code_dropout_mask,
    code_nll,
    teacher_forced_logits,
)


class OracleState(eqx.Module):
    model: Oracle
    opt_state: optax.OptState
    qstate: vq.VQState | None


class LMState(eqx.Module):
    model: GuidingCodeLM
    opt_state: optax.OptState


def init_oracle_state(config: OracleConfig, task: dense_tasks.DenseTask, weight_decay: float, *, key) -> OracleState:
    model_key, q_key = jr.split(key)
    model = Oracle(config, context_channels=task.context_channels, target_channels=task.target_channels,
                   out_channels=task.out_channels, key=model_key)
    qstate = model.quantizer.init_state(key=q_key)
    return OracleState(model, optimizer(weight_decay).init(eqx.filter(model, eqx.is_array)), qstate)


def make_oracle_step(task: dense_tasks.DenseTask, weight_decay: float, dtype: str = "float32"):
    """Stage I's jitted step; the networks compute in `dtype` (`precision`), the quantizer and the loss in float32."""
    opt = optimizer(weight_decay)
    compute = precision.compute_dtype(dtype)

    @eqx.filter_jit(donate="all")
    def step(state: OracleState, batch: dict, key, lr):
        q_key, drop_key = jr.split(key)
        context, target = precision.cast((task.context(batch), task.target(batch)), compute)

        def loss_fn(model: Oracle):
            model = precision.cast_network(model, compute)
            q, qstate = model.encode(target, context, state.qstate, key=q_key, train=True)
            kept = jnp.ones(q.indices.shape, bool)
            if model.code_dropout:
                kept = code_dropout_mask(drop_key, q.indices.shape[0], q.indices.shape[1])
            task_loss = task.loss(model.decode(q.codes, kept, context).astype(jnp.float32), batch)
            return task_loss + q.loss, (task_loss, q, qstate)

        (loss, (task_loss, q, qstate)), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(state.model)
        model, opt_state = apply_updates(opt, grads, state.opt_state, state.model, lr)
        diagnostics, hist = quantizer_outputs(q, model.quantizer.codebook_size)
        return OracleState(model, opt_state, qstate), {"loss": loss, "task_loss": task_loss, **diagnostics}, hist

    return step


def init_lm_state(config: LMConfig, oracle: OracleConfig, task: dense_tasks.DenseTask, weight_decay: float, *,
                  key) -> LMState:
    model = GuidingCodeLM(config, image_size=oracle.image_size, in_channels=task.context_channels,
                          code_length=oracle.grid**2, codebook_size=oracle.quantizer.size, key=key)
    return LMState(model, optimizer(weight_decay).init(eqx.filter(model, eqx.is_array)))


def learning_rate_multipliers(lm: GuidingCodeLM, image_encoder: float):
    """Per-array learning-rate multipliers for `train.apply_updates`: `image_encoder` for the part that reads the
    image (patch embedding, positions, encoder transformer), 1 for the code decoder. big_vision's UViM stage-II
    configs scale their ImageNet-pretrained encoder's rate by 0.1 (`lr_mults` in
    `configs/proj/uvim/train_nyu_depth_pretrained.py`); ours is trained from scratch."""
    ones = jax.tree.map(lambda _: 1.0, eqx.filter(lm, eqx.is_array))
    return eqx.tree_at(lambda m: (m.patches, m.encoder_positions, m.encoder), ones,
                       replace_fn=lambda part: jax.tree.map(lambda _: image_encoder, part))


def make_lm_step(task: dense_tasks.DenseTask, weight_decay: float, dtype: str = "float32",
                 encoder_lr_mult: float = 1.0):
    """Stage II's jitted step; the transformer computes in `dtype` (`precision`), the loss in float32; the image
    encoder learns at `encoder_lr_mult` times the step's learning rate (`learning_rate_multipliers`)."""
    opt = optimizer(weight_decay)
    compute = precision.compute_dtype(dtype)

    @eqx.filter_jit(donate="all")
    def step(state: LMState, batch: dict, key, lr):
        context, code = precision.cast(task.context(batch), compute), batch["code"]

        def loss_fn(model: GuidingCodeLM):
            logits = teacher_forced_logits(precision.cast(model, compute), context, code, key=key)
            return jnp.mean(code_nll(logits, code)), logits

        (loss, logits), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(state.model)
        multipliers = learning_rate_multipliers(state.model, encoder_lr_mult)
        model, opt_state = apply_updates(opt, grads, state.opt_state, state.model, lr, multipliers)
        guess = jnp.argmax(logits, axis=-1)
        stats = {"loss": loss, "accuracy": jnp.mean(guess == code)}
        return LMState(model, opt_state), stats, metrics.histogram(guess, logits.shape[-1])

    return step


class OracleTask:
    """Training stage I with `train.run`."""

    kind = "uvim-oracle"
    pictures = ("predictions.png",)

    def __init__(self, config: OracleConfig, task: dense_tasks.DenseTask, train_ds: dense.DenseData,
                 test_ds: dense.DenseData, *, batch_size: int, seed: int, weight_decay: float, data_header: dict,
                 dtype: str = "float32"):
        if train_ds.images.shape[1] != config.image_size:
            raise InputError(f"the data's images are {train_ds.images.shape[1]} px but the preset expects "
                             f"{config.image_size}: pick a matching --preset or --image-size")
        self.config, self.task, self.weight_decay = config, task, weight_decay
        self.train_ds, self.test_ds = train_ds, test_ds
        self.header = {"oracle": config.to_dict(), "dense_task": dense_tasks.to_dict(task),
                       "data": data_header}
        self.codebook_size = config.quantizer.size
        self.step = make_oracle_step(task, weight_decay, dtype)
        self.batches = lambda start: datasets.step_batches(len(train_ds), batch_size, seed, start, train_ds.batch)

    def init_state(self, key) -> OracleState:
        return init_oracle_state(self.config, self.task, self.weight_decay, key=key)

    def architecture(self, header: dict) -> dict:
        return {"oracle": header["oracle"], "dense_task": header["dense_task"]}

    def evaluate(self, state: OracleState, workdir: Path) -> dict:
        predictions, codes = run_over(self.test_ds, lambda b: oracle_predict(state.model, state.qstate, self.task, b))
        picture(workdir / "predictions.png", self.task, self.test_ds, predictions)
        return {**score(self.task, self.test_ds, predictions), **code_usage(codes, self.codebook_size)}


def make_oracle_task(config: OracleConfig, task_name: str, data_spec: str, data_dir: str | None, *, batch_size: int,
                     seed: int, weight_decay: float, dtype: str = "float32", depth_head: str = "argmax",
                     data_seed: int = 0) -> OracleTask:
    """Stage I of `config` for the task `task_name` on `data_spec`'s train split, evaluated on its test split; the
    checkpoint records the data (and `config`, with or without context), so that stage II and later commands default
    to it. `seed` seeds the training run, `data_seed` the generated data, so that oracles of different seeds are
    trained and scored on the same scenes."""
    train_ds = dense.load(data_spec, "train", data_dir=data_dir, size=config.image_size, seed=data_seed)
    test_ds = dense.load(data_spec, "test", data_dir=data_dir, size=config.image_size, seed=data_seed)
    return OracleTask(config, dense_tasks.make(task_name, train_ds, depth_head=depth_head), train_ds, test_ds,
                      batch_size=batch_size, seed=seed, weight_decay=weight_decay,
                      data_header={"spec": data_spec, "data_dir": data_dir, "seed": data_seed}, dtype=dtype)


class LMTask:
    """Training stage II with `train.run`, on the guiding codes a trained oracle gives the training targets."""

    kind = "uvim-lm"
    pictures = ("predictions.png",)

    def __init__(self, config: LMConfig, oracle_dir: str | Path, train_ds: dense.DenseData,
                 test_ds: dense.DenseData, *, batch_size: int, seed: int, weight_decay: float, data_header: dict,
                 dtype: str = "float32", encoder_lr_mult: float = 1.0, mirror: bool = False):
        if encoder_lr_mult <= 0:
            raise InputError(f"--encoder-lr-mult must be > 0; got {encoder_lr_mult}")
        self.oracle, self.qstate, self.task, oracle_header = load_oracle(oracle_dir)
        self.oracle_config = OracleConfig.from_dict(oracle_header["task"]["oracle"])
        if train_ds.images.shape[1] != self.oracle_config.image_size:
            raise InputError(f"the data's images are {train_ds.images.shape[1]} px but the oracle in {oracle_dir} "
                             f"was trained on {self.oracle_config.image_size} px: use the oracle's data")
        self.config, self.test_ds, self.weight_decay = config, test_ds, weight_decay
        self.codebook_size = self.oracle_config.quantizer.size

        def coded(ds: dense.DenseData) -> CodedData:  # ds with the oracle's code of each example, made once (`cache`)
            def make():
                return {"codes": codes_of(self.oracle, self.qstate, self.task, ds)}

            inputs = cache.digest(oracle_header["sha256"], oracle_header["task"], ds.images, ds.depth, ds.semantic,
                                  ds.instance)
            return CodedData(ds, cache.arrays(f"oracle-codes-{inputs}", make)["codes"])

        self.header = {"lm": dataclasses.asdict(config), "oracle_dir": str(Path(oracle_dir).resolve()),
                       "oracle_sha256": oracle_header["sha256"], "data": data_header,
                       "encoder_lr_mult": encoder_lr_mult}
        self.step = make_lm_step(self.task, weight_decay, dtype, encoder_lr_mult)
        train_coded, self.test_coded = coded(train_ds), coded(test_ds)
        if mirror:  # recorded only when on, so that runs from before the option still resume
            self.header["mirror"] = True
            # The originals' codes are the ones just read (shared with stage IIs without mirror images); only the
            # mirror images are coded and cached anew.
            n, train_ds = len(train_ds), dense.with_mirrors(train_ds)
            mirrored = coded(train_ds.map(lambda array: array[n:]))
            train_coded = CodedData(train_ds, np.concatenate([train_coded.codes, mirrored.codes]))
        self.batches = lambda start: datasets.step_batches(len(train_ds), batch_size, seed, start, train_coded.batch)

    def init_state(self, key) -> LMState:
        return init_lm_state(self.config, self.oracle_config, self.task, self.weight_decay, key=key)

    def architecture(self, header: dict) -> dict:
        # The transformer and what fixes its inputs and outputs: its oracle's network, codebook and task (read from
        # the oracle's header: stage II may start from a run on another, e.g. fine-tuned, oracle of that shape).
        oracle = checkpoint.read_run(header["oracle_dir"], "uvim-oracle")["task"]
        return {"lm": header["lm"], "oracle": oracle["oracle"], "dense_task": oracle["dense_task"]}

    def evaluate(self, state: LMState, workdir: Path) -> dict:
        predictions, codes = run_over(
            self.test_ds, lambda b: stage2_predict(state.model, self.oracle, self.qstate, self.task, b, jr.key(0)))
        picture(workdir / "predictions.png", self.task, self.test_ds, predictions)
        return {**score(self.task, self.test_ds, predictions), **code_usage(codes, self.codebook_size),
                "token_accuracy": float(np.mean(codes == self.test_coded.codes)),
                "heldout_loss": heldout_loss(state.model, self.task, self.test_coded)}


def load_oracle(workdir) -> tuple[Oracle, object, dense_tasks.DenseTask, dict]:
    """The trained stage I in `workdir`: (oracle, quantizer state, task, checkpoint header)."""
    def init(header, key):
        config = OracleConfig.from_dict(header["task"]["oracle"])
        task = dense_tasks.from_dict(header["task"]["dense_task"])
        return init_oracle_state(config, task, header["loop"]["weight_decay"], key=key)

    header, state = checkpoint.load_run(workdir, "uvim-oracle", init)
    return state.model, state.qstate, dense_tasks.from_dict(header["task"]["dense_task"]), header


def load_lm(workdir, oracle_dir=None):
    """The trained stage II in `workdir` and its oracle (from `oracle_dir`, default the folder it was trained with):
    (lm, oracle, quantizer state, task, lm header). Refuses an oracle other than the one stage II learned from."""
    lm_header = checkpoint.read_run(workdir, "uvim-lm")
    oracle_dir = oracle_dir or lm_header["task"]["oracle_dir"]
    oracle, qstate, task, oracle_header = load_oracle(oracle_dir)
    oracle_config = OracleConfig.from_dict(oracle_header["task"]["oracle"])

    def init(header, key):
        config = from_record(LMConfig, header["task"]["lm"])
        return init_lm_state(config, oracle_config, task, header["loop"]["weight_decay"], key=key)

    header, state = checkpoint.load_run(workdir, "uvim-lm", init)
    if header["task"]["oracle_sha256"] != oracle_header["sha256"]:
        raise InputError(f"{workdir} was trained on the codes of another oracle than {oracle_dir}: give the --oracle "
                         "folder it was trained with")
    return state.model, oracle, qstate, task, header
