"""The README's results table, generated from ``results/*.csv``: ``python -m bdunlearn.summary``.

Each row is one claim of the three papers: what the paper reports, what this package
measured, and whether they agree. The table is written between the markers
``<!-- results:start -->`` and ``<!-- results:end -->`` of README.md.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _read(results: Path, stem: str) -> pd.DataFrame | None:
    path = results / f"{stem}.csv"
    return pd.read_csv(path) if path.is_file() else None


def _points(before: float, after: float) -> str:
    return f"{100 * (after - before):+.1f} points"


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _detection_verdict(auc: pd.Series) -> str:
    falls = auc.iloc[-1] <= auc.iloc[0] + 0.02
    if auc.iloc[0] >= 0.8 and falls:
        return "agrees"
    if auc.iloc[0] >= 0.6 and falls:
        return "weaker: above chance, below 0.80; sharding weakens it"
    return "differs: near chance"


def claims(results: Path) -> list[tuple[str, str, str, str]]:
    rows = []
    att = _read(results, "01_attack")
    if att is not None:
        for variant, name in (("bn", "BadNets-based"), ("it", "input-targeted")):
            d = att[att.variant == variant].groupby("requested")[["clean_acc", "asr"]].mean()
            if d.empty:
                continue
            b, a = d.iloc[0], d.iloc[-1]
            base = att[att.variant == variant].baseline_acc.mean()
            ok = b.asr <= 0.15 and a.asr >= 0.8 and abs(b.clean_acc - base) <= 0.02
            rows.append((f"BAU {name}: unlearning the mitigation samples switches the backdoor on",
                         "benign before the requests, high ASR after (exact unlearning)",
                         f"ASR {_pct(b.asr)} before, {_pct(a.asr)} after; clean accuracy "
                         f"{_pct(b.clean_acc)} / {_pct(a.clean_acc)} (no attack {_pct(base)})",
                         "agrees" if ok else "weaker than the paper"))
    traj = _read(results, "02_unlearning_trajectory")
    if traj is not None:
        last = traj[traj.requested == traj.requested.max()]
        last = last[last.unlearning.isin(["exact", "sisa"])]
        by = last.groupby("shards").asr.mean()
        txt = ", ".join(f"S={s}: {_pct(v)}" for s, v in by.items())
        harder = len(by) > 1 and by.iloc[-1] < by.iloc[0]
        rows.append(("BAU: sharding (SISA) makes the attack harder",
                     "lower ASR after all requests with more shards",
                     f"final ASR {txt}", "agrees" if harder else "differs"))
        am = traj[traj.unlearning == "amnesiac"].groupby("requested").asr.mean()
        if not am.empty:
            rows.append(("BAU (later work): the attack also works against approximate unlearning",
                         "the backdoor appears under Amnesiac unlearning",
                         f"ASR {_pct(am.iloc[0])} before, {_pct(am.iloc[-1])} after",
                         "agrees" if am.iloc[-1] - am.iloc[0] > 0.3 else "weaker"))
    det = _read(results, "04_detection")
    if det is not None:
        for detector in ("mu", "sms"):
            d = det[(det.variant == "bn") & (det.detector == detector)].groupby("shards").auroc.mean()
            if d.empty:
                continue
            txt = ", ".join(f"S={s}: {v:.3f}" for s, v in d.items())
            rows.append((f"BAU: {detector.upper()} detects mitigation samples; sharding weakens it",
                         "high AUROC at few shards, falling with more shards",
                         f"AUROC {txt}",
                         _detection_verdict(d)))
    ovh = _read(results, "03_defense_overhead")
    if ovh is not None and "cumulative_seconds" in ovh:
        runs = ovh[(ovh.setting == "bau") & ~ovh.defense.str.startswith("screen")]
        for defense, d in runs.groupby("defense"):
            once = ovh[(ovh.setting == "badnets") & (ovh.defense == defense)].seconds.mean()
            total = d.groupby("requested").seconds.mean().sum()
            rows.append((f"BAU: the attack multiplies the cost of {defense}",
                         "a defender must re-run it after every request batch",
                         f"{total:.0f} s over {d.requested.nunique()} runs vs {once:.0f} s once "
                         f"on a classical BadNets model ({total / max(once, 1e-9):.1f}x)",
                         "agrees" if total > 1.5 * once else "differs"))
        nc = runs[runs.defense == "neural_cleanse"]
        if "flagged" in nc and len(nc):
            flagged = nc[nc.flagged.astype(str) == "True"].requested
            first = "never" if flagged.empty else f"from {flagged.min()} requests on"
            rows.append(("BAU: before the requests the backdoor hides from model-level "
                         "detection", "Neural Cleanse needs the activated backdoor",
                         f"Neural Cleanse flags the target {first} (runs after "
                         f"{', '.join(str(k) for k in nc.requested)} requests)",
                         "agrees" if flagged.empty or flagged.min() > 0 else "differs: the "
                         "dormant backdoor is found"))
    era = _read(results, "05_backdoor_erasure")
    if era is not None:
        names = {"bau": "BAU model after activation", "badnets": "classical BadNets"}
        for attack_name, d in era[era.defense == "baeraser"].groupby("attack"):
            drop = 1 - d.asr_after.mean() / max(d.asr_before.mean(), 1e-9)
            rows.append((f"BAERASER erases the backdoor ({names.get(attack_name, attack_name)})",
                         "ASR lowered by 99% on average, clean accuracy kept",
                         f"ASR {_pct(d.asr_before.mean())} -> {_pct(d.asr_after.mean())} "
                         f"({_pct(drop)} lower), clean accuracy "
                         f"{_points(d.clean_acc_before.mean(), d.clean_acc_after.mean())}",
                         "agrees" if drop >= 0.9 else "weaker"))
        for attack_name, d in era[era.defense == "grad_prune"].groupby("attack"):
            per = d.groupby("defender_samples")[["asr_after", "clean_acc_after",
                                                 "clean_acc_before"]].mean()
            txt = "; ".join(f"{n} images: ASR {_pct(r.asr_after)}, accuracy "
                            f"{_points(r.clean_acc_before, r.clean_acc_after)}"
                            for n, r in per.iterrows())
            best = per.iloc[-1]
            ok = best.asr_after < 0.1 and best.clean_acc_before - best.clean_acc_after <= 0.1
            rows.append((f"Grad-Prune erases the backdoor with little data "
                         f"({names.get(attack_name, attack_name)}, known trigger)",
                         "low ASR with 10-100 clean samples per class, small accuracy loss",
                         f"from ASR {_pct(d.asr_before.mean())}: {txt}",
                         "agrees" if ok else "weaker"))
        clean = era[(era.attack == "none") & (era.defense == "neural_cleanse")]
        if len(clean):
            fp = (clean.flagged_labels > 0).sum()
            rows.append(("Neural Cleanse does not flag clean models",
                         "anomaly index below 2 on clean models",
                         f"{fp} of {len(clean)} clean models flagged",
                         "agrees" if fp == 0 else "false positives"))
    return rows


def table(results: Path) -> str:
    rows = claims(results)
    if not rows:
        return "_No results yet: run `make reproduce`._"
    lines = ["| claim | paper | measured here | verdict |", "|---|---|---|---|"]
    lines += [f"| {c} | {p} | {m} | {v} |" for c, p, m, v in rows]
    timings = results / "timings.csv"
    if timings.is_file():
        t = pd.read_csv(timings)
        lines += ["", f"Run of {t.date.max()} on {t.machine.iloc[0]}, profile "
                  f"`{t.profile.iloc[0]}`; wall time per notebook: "
                  + ", ".join(f"{r.notebook} {r.seconds / 60:.1f} min" for r in t.itertuples())
                  + f" (total {t.seconds.sum() / 60:.0f} min)."]
    return "\n".join(lines)


def update_readme(readme: Path, results: Path) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} markers")
    new = re.sub(re.escape(START) + ".*?" + re.escape(END),
                 lambda _: f"{START}\n{table(results)}\n{END}", text, flags=re.S)
    readme.write_text(new)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    ap.add_argument("--print", action="store_true", help="print the table, leave README alone")
    args = ap.parse_args(argv)
    if args.print:
        print(table(Path(args.results)))
    else:
        update_readme(Path(args.readme), Path(args.results))


if __name__ == "__main__":
    main()
