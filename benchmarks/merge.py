"""Splice a throughput run of some models into an earlier result of the same machine (`--merge`): a model that
changed (retrained on a new recipe) is measured again without timing every other model again.

The earlier result keeps the rows of the models the new run did not measure; the new run's rows replace the rest.
Each row keeps the MatMul peak of its own run (its `fraction_of_peak`), `runs` says which run measured which
models, and the targets are checked again over the merged rows. Results of a different machine, software or
timing method are never merged: their figures would not be comparable.
"""

from benchmarks import repeat, rounds, targets
from benchmarks.errors import BenchmarkError

#: What two results must share to be merged: the machine, the software that is timed and how it is timed.
SAME_MACHINE = ("cpu_model", "usable_cpus", "memory_gib")
SAME_VERSIONS = ("python", "numpy", "onnx", "onnxruntime", "tensorflow", "keras", "jax")
SAME_SETTINGS = ("device", "provider", "threads", "inter_op_threads", "graph_optimization_level", "execution_mode",
                 "allow_spinning", "batch_sizes", "repeats", "max_seconds_per_point", "min_runs", "warmup_seconds",
                 "copy_inclusive", "tf_baseline", "tf_bf16_baseline", "jax_baseline", "cuda_graphs", "timing", "rounds",
                 "tune")
#: What a result written before a setting existed means by it.
DEFAULTS = {"settings.rounds": 1, "settings.tune": False}
#: How far apart two runs' MatMul peaks may be and still be one machine. A cloud VM's CPU name does not name its
#: host: "AMD EPYC" measured 430 GFLOP/s on one and 180 on another; one run's start and end differ by up to 7%.
PEAK_TOLERANCE = 0.15


def _run(result, models):
    return {"created": result.get("created"), "command": result.get("command"), "models": list(models),
            "peak_gflops_per_s": (result.get("peak") or {}).get("gflops_per_s"),
            "load_average_1min": (result.get("machine") or {}).get("load_average_1min")}


def _at(result, path):
    """The value at a dotted `path` of a result ("machine.versions.onnxruntime"), None where any part is missing
    (DEFAULTS where the result predates the setting)."""
    value = result
    for key in path.split("."):
        value = (value or {}).get(key)
    return DEFAULTS.get(path) if value is None and result is not None else value


CHECKED = (("schema", "device") + tuple("machine." + k for k in SAME_MACHINE)
           + tuple("machine.versions." + k for k in SAME_VERSIONS) + tuple("settings." + k for k in SAME_SETTINGS))


def differences(old, new):
    """What differs between two results that must not (["settings.threads: 2 then 1", ...]); empty if none."""
    found = ["{}: {} then {}".format(p, _at(old, p), _at(new, p)) for p in CHECKED if _at(old, p) != _at(new, p)]
    gpus = [[g.get("name") for g in _at(r, "machine.gpus") or []] for r in (old, new)]
    if gpus[0] != gpus[1]:
        found.append("machine.gpus: {} then {}".format(*gpus))
    # Against the peak of every run the earlier result holds rows of, so that merges cannot drift step by step.
    earlier = [r.get("peak_gflops_per_s") for r in old.get("runs") or []] or [_at(old, "peak.gflops_per_s")]
    peak = _at(new, "peak.gflops_per_s")
    for before in [p for p in earlier if p] if peak else []:
        if abs(peak - before) > PEAK_TOLERANCE * before:
            found.append("peak.gflops_per_s: {:.1f} then {:.1f}, more than {:.0%} apart: another host behind the "
                         "same CPU name".format(before, peak, PEAK_TOLERANCE))
            break
    return found


def merge(old, new, where="the earlier result"):
    """`new` with the models, rows and skipped points of `old` that `new` did not measure, in `old`'s order (the
    models new to it after); `runs` lists each run and the models whose figures it holds. Raises BenchmarkError,
    naming what differs, where the two are not of one machine, software and timing method."""
    differ = differences(old, new)
    if differ:
        raise BenchmarkError("Cannot merge into {}: it was measured differently ({}). Measure every model again "
                             "without --merge.".format(where, "; ".join(differ[:4])))
    measured = [m["name"] for m in new["models"]]
    names = [m["name"] for m in old["models"]]
    order = names + [n for n in measured if n not in names]
    models = {m["name"]: m for m in old["models"]}
    models.update({m["name"]: m for m in new["models"]})
    rows = {n: [r for r in (new if n in measured else old)["rows"] if r["model"] == n] for n in order}
    skipped = [s for s in old.get("skipped") or [] if s["model"] not in measured] + list(new.get("skipped") or [])
    earlier = old.get("runs") or [_run(old, names)]
    runs = [dict(r, models=[m for m in r["models"] if m not in measured]) for r in earlier]
    runs = [r for r in runs if r["models"]] + [_run(new, measured)]
    merged = dict(new, models=[models[n] for n in order], rows=[r for n in order for r in rows[n]],
                  skipped=skipped, runs=runs, repeat=repeat.merge(old.get("repeat"), new.get("repeat"), measured))
    merged["rounds"] = rounds.merge(old.get("rounds"), new.get("rounds"), merged["rows"], merged["device"])
    merged["targets"] = targets.evaluate(merged)
    return merged


def legend_lines(result):
    """One line naming the runs a merged result holds, or none for a result of one run."""
    runs = result.get("runs") or []
    if len(runs) < 2:
        return []
    return ["- merged from {} runs on this machine (`--merge`), each row from the run that measured its model: {}"
            .format(len(runs), "; ".join("{} on {} (MatMul peak {:.1f} GFLOP/s)".format(
                ", ".join(r["models"]), r["created"], r["peak_gflops_per_s"] or float("nan")) for r in runs))]
