"""Where a UViM stage II's wrong tokens land, and what they cost: a check of why a stage II with lower token accuracy
can still decode to a better prediction.

For each stage-II folder, on the test split (greedy decoding, as `fsq eval`; `--temperature T` samples, as
`fsq eval --temperature T`):

- token accuracy against its oracle's codes;
- over the wrong tokens, the mean distance between the predicted and the right code vector (the vectors the oracle's
  decoder reads: FSQ's grid points, VQ's codewords), over the same mean for chance: the right code against one drawn
  from the oracle's own code distribution (a shuffle of the test codes). 1 means no closer than chance;
- for FSQ, the share of wrong tokens one grid step from the right one (one channel off by one level), and that share
  for chance;
- the task metric of three codes through the same decoder: the oracle's, stage II's, and the oracle's with exactly
  stage II's wrong positions replaced by chance codes. Stage II's against the last separates how many tokens are
  wrong from where the wrong ones land. The table shows the task's first metric (RMSE, PSNR, PQ); `--metric` picks
  another of the task's metrics (colorization's colour_fd, say);
- with `--chance-share P`, the metric of the oracle's code with a random share P of its positions (the same ones
  for every folder) replaced by chance codes: how much each decoder loses per wrong token at equal token accuracy.

    python benchmarks/uvim_tokens.py runs/bench-uvim/depth-fsq/lm-seed0 runs/bench-uvim/depth-vq-split/lm-seed0
"""

import argparse
import sys

import jax.numpy as jnp
import numpy as np

from fsq_ref import fsq
from fsq_ref.common.errors import InputError
from fsq_ref.evaluation import runs, uvim_eval


def decoded_metric(oracle, qstate, task, ds, codes: np.ndarray) -> dict[str, float]:
    """The task metric of the oracle's decoder on `codes` [N, S] (with each example's input)."""
    predictions, _ = uvim_eval.run_over(uvim_eval.CodedData(ds, codes), lambda b: (
        uvim_eval.decode_and_predict(oracle, qstate, task, b["code"], task.context(b)), b["code"]))
    return uvim_eval.score(task, ds, predictions)


def analyse(folder: str, limit: int | None, seed: int, temperature: float = 0.0,
            chance_share: float | None = None) -> dict:
    models = runs.stage_two_models(folder)
    oracle, qstate, task = models.oracle, models.qstate, models.task
    ds = runs.dense_data(models.header, None, None, "test", limit)
    print(f"{folder}: decoding {len(ds)} test examples with stage II and the oracle", file=sys.stderr, flush=True)
    oracle_preds, truth = uvim_eval.predict(None, oracle, qstate, task, ds)
    stage2_preds, guess = uvim_eval.predict(models.lm, oracle, qstate, task, ds, temperature=temperature, seed=seed)
    chance = np.random.default_rng(seed).permutation(truth.ravel()).reshape(truth.shape)
    wrong = guess != truth
    vectors = lambda idx: np.asarray(oracle.quantizer.indices_to_codes(jnp.asarray(idx), qstate))
    right_vec = vectors(truth[wrong])
    distance = lambda other: float(np.mean(np.linalg.norm(vectors(other) - right_vec, axis=-1)))
    row = {"token accuracy": float(np.mean(~wrong)),
           "distance ratio": distance(guess[wrong]) / distance(chance[wrong])}
    if isinstance(oracle.quantizer, fsq.FSQ):
        half = np.asarray([l // 2 for l in oracle.quantizer.levels], np.float32)

        def one_step(other):  # one channel differs by one level, the others agree
            steps = np.abs(np.round((vectors(other) - right_vec) * half))
            return float(np.mean(steps.sum(axis=-1) == 1))

        row.update({"one step": one_step(guess[wrong]), "one step (chance)": one_step(chance[wrong])})
    row["metrics"] = {"oracle": uvim_eval.score(task, ds, oracle_preds),
                      "stage II": uvim_eval.score(task, ds, stage2_preds),
                      "chance at wrong": decoded_metric(oracle, qstate, task, ds, np.where(wrong, chance, truth))}
    if chance_share is not None:
        share = np.random.default_rng(seed + 1).random(truth.shape) < chance_share
        row["metrics"]["chance at share"] = decoded_metric(oracle, qstate, task, ds, np.where(share, chance, truth))
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="stage-II folders (`fsq train uvim-lm`)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test examples")
    parser.add_argument("--seed", type=int, default=0, help="the shuffle that draws chance codes, and the sampling")
    parser.add_argument("--temperature", type=float, default=0.0, help="stage II samples at T (0: greedy)")
    parser.add_argument("--metric", default=None, help="which of the task's metrics (default: its first)")
    parser.add_argument("--chance-share", type=float, default=None,
                        help="also decode the oracle's code with this share of positions drawn by chance")
    args = parser.parse_args()
    try:
        if args.chance_share is not None and not 0 <= args.chance_share <= 1:
            raise InputError(f"--chance-share {args.chance_share} is not a share: give a number from 0 to 1")
        rows = {folder: analyse(folder, args.limit, args.seed, args.temperature, args.chance_share)
                for folder in args.folders}
        metrics = list(next(iter(rows.values()))["metrics"]["oracle"])
        metric = args.metric or metrics[0]  # the task's first metric: RMSE, PSNR, PQ
        if any(metric not in row["metrics"]["oracle"] for row in rows.values()):
            raise InputError(f"--metric {metric} is not a metric of every folder's task: give one of "
                             f"{', '.join(metrics)}, and folders of one task")
    except InputError as e:
        sys.exit(f"error: {e}")
    shared = "" if args.chance_share is None else f" oracle code, chance at {args.chance_share:.1%} of positions |"
    print(f"| stage II | token accuracy | wrong tokens: distance / chance | FSQ: one step off (chance) | "
          f"{metric}: oracle code | stage II code | oracle code, chance at stage II's wrong tokens |{shared}")
    print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if shared else ""))
    for folder, row in rows.items():
        one_step = (f"{row['one step']:.1%} ({row['one step (chance)']:.1%})" if "one step" in row else "-")
        m = row["metrics"]
        decoded = [m[k][metric] for k in ("oracle", "stage II", "chance at wrong", "chance at share") if k in m]
        print(f"| {folder} | {row['token accuracy']:.1%} | {row['distance ratio']:.2f} | {one_step} | "
              + " | ".join(f"{v:.4g}" for v in decoded) + " |")
    print("command: python benchmarks/uvim_tokens.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
