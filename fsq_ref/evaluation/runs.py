"""Run folders after training: what one holds, the data it was trained on, and measuring it.

Every command that reads a trained folder takes its data from here, so that leaving `--data` out means "the data
this model was trained on" (recorded in the checkpoint header), never a default dataset, and data of another image
shape is refused rather than silently resized.
"""

import json
from pathlib import Path
from typing import NamedTuple

from fsq_ref import dense_tasks, tokenizer, uvim
from fsq_ref.common import files
from fsq_ref.common.errors import InputError
from fsq_ref.data import datasets, dense
from fsq_ref.evaluation import uvim_eval
from fsq_ref.quantizer_config import QuantizerConfig
from fsq_ref.training import checkpoint, finetune, tokenizer_train, uvim_train


def recorded_data(header: dict) -> dict:
    """The data a run was trained on: {"spec", "data_dir" (or None), ...} as the trainer recorded it."""
    return {"data_dir": None, **header["task"]["data"]}


def data_for(header: dict, data_spec: str | None, data_dir: str | None) -> tuple[str, str | None]:
    """(spec, data_dir) that a command reading this run uses: what the user gave, else what the run was trained on.
    The recorded --data-dir goes with the recorded data only."""
    if data_spec is not None:
        return data_spec, data_dir
    trained = recorded_data(header)
    return trained["spec"], data_dir or trained["data_dir"]


def image_data(header: dict, data_spec: str | None, data_dir: str | None, split: str) -> datasets.Dataset:
    """`split` of `data_spec` (default: the tokenizer's training data) at the tokenizer's image shape.

    An in-memory source (Fashion-MNIST, procedural, .npz) whose images are stored at neither the model's shape nor
    the shape of the data it was trained on is refused: resizing it would measure the model on other data than the
    user thinks. Image folders are always fitted to the model (their files come in many sizes).
    """
    ae = tokenizer.TokenizerConfig.from_dict(header["task"]["tokenizer"]).autoencoder
    spec, data_dir = data_for(header, data_spec, data_dir)
    ds = datasets.load(spec, split, data_dir=data_dir, image_size=ae.image_size, channels=ae.channels)
    native = getattr(ds, "native_shape", None)
    if native is not None and native != ds.image_shape and list(native) != recorded_data(header).get("image_shape"):
        raise InputError(f"{spec}'s images are {'x'.join(map(str, native))} but this tokenizer takes "
                         f"{'x'.join(map(str, ds.image_shape))}: give data of that shape (image folders are resized "
                         "automatically)")
    return ds


def dense_data(header: dict, data_spec: str | None, data_dir: str | None, split: str,
               limit: int | None = None) -> dense.DenseData:
    """`split` of `data_spec` (default: the data a UViM stage was trained on) at its oracle's image size."""
    if "oracle" in header["task"]:
        size = header["task"]["oracle"]["image_size"]
    else:  # a stage-II folder: the size is its oracle's
        size = checkpoint.read_run(header["task"]["oracle_dir"], "uvim-oracle")["task"]["oracle"]["image_size"]
    spec, data_dir = data_for(header, data_spec, data_dir)
    ds = dense.load(spec, split, data_dir=data_dir, size=size, seed=recorded_data(header)["seed"])
    if not limit:
        return ds
    return ds.map(lambda array: array[:limit])


class UvimModels(NamedTuple):
    """The models of a UViM stage-I or stage-II folder, and what they need to run."""

    lm: uvim.GuidingCodeLM | None  # stage II; None for a stage-I folder
    oracle: uvim.Oracle  # stage I: the folder's, or the one its stage II learned from
    qstate: object  # the oracle's quantizer state
    task: dense_tasks.DenseTask
    header: dict  # the checkpoint header of the folder itself


def uvim_models(workdir, oracle_dir=None) -> UvimModels:
    """The models of a stage-I or stage-II folder; a stage II's oracle from `oracle_dir` (default: the folder it was
    trained with)."""
    if checkpoint.read_run(workdir).get("kind") == "uvim-lm":
        return UvimModels(*uvim_train.load_lm(workdir, oracle_dir))
    oracle, qstate, task, header = uvim_train.load_oracle(workdir)
    return UvimModels(None, oracle, qstate, task, header)


def stage_two_models(workdir, task_name: str | None = None) -> UvimModels:
    """`uvim_models` of a stage-II folder (of task `task_name` when given), else an `InputError` that says what
    `workdir` holds instead: no run, a stage I, or another task's stage II."""
    wanted = f"{task_name} stage-II folders" if task_name else "stage-II folders"
    if not (Path(workdir) / checkpoint.CHECKPOINT).exists():
        raise InputError(f"no run at {workdir}: give {wanted} (`fsq train uvim-lm --workdir FOLDER`)")
    models = uvim_models(workdir)
    if models.lm is None:
        raise InputError(f"{workdir} is a stage-I folder: give {wanted} (`fsq train uvim-lm --oracle {workdir}`)")
    if task_name is not None and models.task.name != task_name:
        raise InputError(f"{workdir} is a {models.task.name} stage II, not a {task_name} stage II: give {wanted}")
    return models


class Evaluation(NamedTuple):
    """What `evaluate` measured, and on what."""

    results: dict  # {metric: value}, or for UViM {row: {metric: value}}
    data: str  # the data spec measured on
    examples: int  # how many examples of it


def evaluate(workdir, *, data_spec: str | None = None, data_dir: str | None = None, split: str = "test",
             task_name: str | None = None, limit: int | None = None, temperature: float = 0.0,
             seed: int = 0) -> Evaluation:
    """Measure the model in `workdir` on `split` of `data_spec` (default: its training data).

    A tokenizer: reconstruction L1, MSE, PSNR and codebook usage ({metric: value}). A UViM folder: the task metric
    and codebook usage of stage II (decoded greedily, or sampled at `temperature` > 0 from `seed`), its oracle, the
    oracle's decoder given no code, and the trivial baseline ({row: {metric: value}}; `uvim_eval`).
    A MaskGIT folder is refused: its samples are measured by `features.evaluate_samples` (`fsq eval-samples`).
    """
    header = checkpoint.read_run(workdir)
    kind = header.get("kind")
    if kind == "maskgit":
        raise InputError(f"{workdir} is a MaskGIT run, which `fsq eval` does not measure: sample it with `fsq generate "
                         f"--workdir {workdir} --autoencoder TOKENIZER_DIR --out samples.npz`, then score the samples "
                         "with `fsq eval-samples --samples samples.npz`")
    if kind not in ("autoencoder", "uvim-oracle", "uvim-lm"):
        raise InputError(f"{workdir} holds a run of kind '{kind}', which `fsq eval` does not measure: give a "
                         "tokenizer folder, or a UViM stage-I or stage-II folder")
    spec = data_for(header, data_spec, data_dir)[0]
    if kind.startswith("uvim"):
        models = uvim_models(workdir)
        if task_name is not None and task_name != models.task.name:
            raise InputError(f"{workdir} was trained for {models.task.name}, not {task_name}: drop --task or fix it")
        if models.lm is None and temperature:
            raise InputError(f"{workdir} is a stage I, which samples nothing: give --temperature a stage-II folder")
        ds = dense_data(models.header, data_spec, data_dir, split, limit)
        results = uvim_eval.evaluate(models.lm, models.oracle, models.qstate, models.task, ds,
                                     temperature=temperature, seed=seed)
        return Evaluation(results, spec, len(ds))
    if task_name is not None:
        raise InputError("--task is for UViM folders; a tokenizer has no task")
    if temperature:
        raise InputError("--temperature is for UViM stage II, which samples its code; a tokenizer samples nothing")
    model, qstate, header = tokenizer_train.load(workdir)
    ds = image_data(header, data_spec, data_dir, split)
    return Evaluation(tokenizer_train.evaluate(model, qstate, ds), spec, len(ds))


def evaluation_file(workdir, split: str = "test", temperature: float = 0.0, seed: int = 0) -> Path:
    """Where `fsq eval` writes by default: WORKDIR/eval-SPLIT.json, or for a stage II sampled at `temperature` > 0,
    WORKDIR/eval-SPLIT-temperatureT-seedS.json (beside the greedy one, not over it)."""
    sampled = f"-temperature{temperature:g}-seed{seed}" if temperature else ""
    return Path(workdir) / f"eval-{split}{sampled}.json"


def evaluate_to_file(workdir, out=None, *, data_spec: str | None = None, data_dir: str | None = None,
                     split: str = "test", task_name: str | None = None, limit: int | None = None,
                     temperature: float = 0.0, seed: int = 0) -> tuple[Evaluation, Path]:
    """`evaluate` the model in `workdir` and write the result as JSON to `out` (default: `evaluation_file`), whole or
    not at all: {"data", "split", "examples", "step" (of the checkpoint), "temperature" and "seed" (when sampled),
    then the results}. Returns (the evaluation, the file written)."""
    evaluation = evaluate(workdir, data_spec=data_spec, data_dir=data_dir, split=split, task_name=task_name,
                          limit=limit, temperature=temperature, seed=seed)
    path = Path(out) if out else evaluation_file(workdir, split, temperature, seed)
    decoding = {"temperature": temperature, "seed": seed} if temperature else {}
    record = {"data": evaluation.data, "split": split, "examples": evaluation.examples,
              "step": checkpoint.read_run(workdir)["step"], **decoding, **evaluation.results}
    files.write_atomic(path, json.dumps(record, indent=2).encode())
    return evaluation, path


def last_evaluation(workdir) -> dict | None:
    """The last held-out evaluation that `workdir`'s metrics.jsonl records (None if there is none)."""
    workdir = Path(workdir)
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return None
    last = None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut short by a crash
        if record.get("split") == "eval":
            last = record
    return last


def describe(workdir) -> dict:
    """What the run folder `workdir` holds: kind, the command that made it, step, the run it was fine-tuned from,
    data, model and quantizer settings, and the last evaluation recorded in its metrics.jsonl."""
    workdir = Path(workdir)
    header = checkpoint.read_run(workdir)
    kind, task = header.get("kind"), header.get("task", {})
    info = {"folder": str(workdir), "kind": kind, "made by": checkpoint.COMMANDS.get(kind, "?"),
            "step": f"{header.get('step')} of {header.get('total_steps')}",
            "dtype": header.get("loop", {}).get("dtype", "float32")}
    if "init_from" in header:
        info["started from"] = finetune.describe(header["init_from"])
    if "data" in task:
        info["data"] = recorded_data(header)["spec"]
    quantizer = (task.get("tokenizer") or task.get("oracle") or {}).get("quantizer")
    if quantizer is not None:
        info["quantizer"] = QuantizerConfig.from_dict(quantizer).describe()
    if "tokenizer" in task:
        info["network"] = ", ".join(f"{k} {v}" for k, v in task["tokenizer"]["autoencoder"].items())
    if kind == "maskgit":
        config = task["maskgit"]
        info["tokens"] = (f"{config['grid'][0]}x{config['grid'][1]} grids of {config['codebook_size']} codes, "
                          f"{config['num_classes']} classes (tokenizer {task['tokens']['tokenizer'][:12]})")
        info["network"] = ", ".join(f"{k} {config[k]}" for k in ("dim", "depth", "num_heads", "mlp_dim", "dropout"))
    if kind == "uvim-oracle":
        oracle = uvim_train.OracleConfig.from_dict(task["oracle"])
        info["task"] = (f"{task['dense_task']['name']}, {oracle.grid}x{oracle.grid} code, "
                        f"{'with' if oracle.context else 'without'} image context")
    if kind == "uvim-lm":
        info["oracle"] = task["oracle_dir"]
    info["checkpoint sha256"] = header.get("sha256", "")[:12]
    last = last_evaluation(workdir)
    if last is not None:
        info["last evaluation"] = "  ".join(
            f"{k} {v:.4g}" for k, v in last.items() if k not in ("split",) and isinstance(v, (int, float)))
    return info

