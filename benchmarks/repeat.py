"""Points timed again at the end of a run, beside their first timing: how steady the machine was while the table
was measured.

A cloud VM can run a memory-bound file at very different speeds minutes apart (vq_vae's int8 encoder: 168k and
67k images/s at batch 256 on one 2-core VM, its MatMul peak unchanged), so a table of one pass cannot tell a slow
phase of the machine from a slow file. After every model is measured, each model's points at one batch size (every
part and precision, and the baseline) are timed again; a point whose figure moved by more than TOLERANCE is named
in the report, and a ratio that moved across a target line says that the verdict of that point is not firm.
"""

#: A point timed again that moved by more than this (either way) is reported as unsteady.
TOLERANCE = 0.15
#: The batch size timed again: the first of these the run measures, else its largest.
PREFERRED_BATCHES = (256, 1024, 64)
DEFINITION = ("after every model was measured, each model's points at one batch size were timed again the same way "
              "(every part and precision, and the baseline); change = again / first - 1")
#: The baseline figure of a row and its ratio, by the baseline that measured it.
BASELINES = (("tf", "tf_images_per_s", "ort_tf_ratio"), ("jax", "jax_images_per_s", "ort_jax_ratio"))


def batch_to_repeat(batch_sizes, wanted=None):
    """`wanted` if given (it must be one of the run's batch sizes), else the first of PREFERRED_BATCHES measured,
    else the largest batch size."""
    if wanted is not None:
        if int(wanted) not in batch_sizes:
            raise ValueError("the batch size to time again ({}) is not one of the run's ({})".format(
                wanted, ", ".join(map(str, batch_sizes))))
        return int(wanted)
    return next((b for b in PREFERRED_BATCHES if b in batch_sizes), max(batch_sizes))


def _key(row):
    return row["model"], row["part"], row["precision"], row["batch_size"]


def compare(first_rows, again_rows):
    """One entry per point timed again: its first and second images/s and their change, and the same for its
    baseline figure and ratio where the row has one."""
    first = {_key(r): r for r in first_rows}
    points = []
    for row in again_rows:
        before = first.get(_key(row))
        if before is None:
            continue
        point = {"model": row["model"], "part": row["part"], "precision": row["precision"],
                 "batch_size": row["batch_size"], "images_per_s": before["images_per_s"],
                 "again_images_per_s": row["images_per_s"],
                 "change": row["images_per_s"] / before["images_per_s"] - 1}
        for name, speed, ratio in BASELINES:
            if before.get(speed) and row.get(speed):
                point.update({"baseline": name, "baseline_images_per_s": before[speed],
                              "again_baseline_images_per_s": row[speed],
                              "baseline_change": row[speed] / before[speed] - 1,
                              "ratio": before[ratio], "again_ratio": row[ratio]})
                break
        points.append(point)
    return points


def moved(point, tolerance=TOLERANCE):
    """Whether the point's own figure or its baseline's moved by more than `tolerance`."""
    return any(abs(point.get(k) or 0.0) > tolerance for k in ("change", "baseline_change"))


def summary(points, batch_size, tolerance=TOLERANCE):
    """The `repeat` section of a result."""
    unsteady = [p for p in points if moved(p, tolerance)]
    return {"definition": DEFINITION, "batch_size": batch_size, "tolerance": tolerance, "points": points,
            "unsteady": len(unsteady), "largest_change": max((abs(p[k]) for p in points
                                                              for k in ("change", "baseline_change") if k in p),
                                                             default=None)}


def merge(old, new, measured):
    """`new`'s points, and `old`'s for the models `measured` now did not measure (--merge)."""
    if not old and not new:
        return None
    base = new or old
    points = [p for p in (old or {}).get("points", []) if p["model"] not in measured] + list(
        (new or {}).get("points", []))
    return summary(points, base["batch_size"], base.get("tolerance", TOLERANCE))


def report_lines(section):
    """Markdown: how far the points timed again moved, and a table of the unsteady ones."""
    if not section or not section.get("points"):
        return []
    points, tolerance = section["points"], section["tolerance"]
    unsteady = [p for p in points if moved(p, tolerance)]
    batches = " and ".join(str(b) for b in sorted({p["batch_size"] for p in points}))  # several after --merge
    lines = ["## Timed again at the end of the run", "",
             "{} points at batch {} were timed again: {}. {} moved by more than {:.0%}; the largest change was "
             "{:.0%}.".format(len(points), batches, section.get("definition", DEFINITION),
                              "None" if not unsteady else len(unsteady), tolerance,
                              section.get("largest_change") or 0.0), ""]
    if unsteady:
        lines += ["| model | part | precision | images/s | again | change | baseline | again | change | ratio | "
                  "again |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for p in unsteady:
            base = ["{:,.0f}".format(p["baseline_images_per_s"]), "{:,.0f}".format(p["again_baseline_images_per_s"]),
                    "{:+.0%}".format(p["baseline_change"]), "{:.2f}".format(p["ratio"]),
                    "{:.2f}".format(p["again_ratio"])] if "baseline" in p else [""] * 5
            lines.append("| " + " | ".join([p["model"], p["part"], p["precision"], "{:,.0f}".format(p["images_per_s"]),
                                            "{:,.0f}".format(p["again_images_per_s"]), "{:+.0%}".format(p["change"])]
                                           + base) + " |")
        lines += ["", "A ratio that differs between the two timings is not a property of the file alone; the table "
                      "above keeps the first timing.", ""]
    return lines
