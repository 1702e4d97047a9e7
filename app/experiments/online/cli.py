"""Commands of this experiment area; ``app.experiments.cli`` registers them.

Each verb imports its implementation when it runs (the one place imports sit inside
functions): ``recstack --help`` imports this module and so loads no Beam, Feast or MLflow
(the start-up it saves is measured in docs/architecture.md, "Imports").
"""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.console import Console

console = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Adds this area's ``recstack experiment <verb>`` commands to ``app``."""
    app.command("ab")(ab)
    app.command("aa")(aa)
    app.command("shadow")(shadow)


def register_root(root: typer.Typer) -> None:
    """Adds this area's top-level ``recstack <verb>`` commands to ``root``."""


def _settings():  # noqa: ANN202 - imports stay inside commands (fast --help)
    from recstack.logs import configure_logging
    from recstack.settings import get_settings

    s = get_settings()
    configure_logging(s.log_level, s.log_json)
    logging.getLogger("faiss").setLevel(logging.WARNING)
    return s


def ab(
    challenger: Annotated[str, typer.Option(
        help="treatment: a ranker version (7), an alias (challenger), or a simulator policy "
             "(policy:oracle, policy:oracle:<noise>, policy:logging, policy:random)")],
    sim_days: Annotated[int, typer.Option(min=1, max=60, help="simulated days of traffic")] = 3,
    control: Annotated[str, typer.Option(
        help="control arm: champion (default), a version, or a policy when the challenger is "
             "one")] = "champion",
    weight: Annotated[float | None, typer.Option(
        min=0.01, max=0.99, help="treatment share of users (default RECSTACK_AB__TREATMENT_WEIGHT)"
    )] = None,
    salt: Annotated[str | None, typer.Option(help="assignment salt (default RECSTACK_AB__SALT)")
                    ] = None,
    seed: Annotated[int, typer.Option(help="seed of sessions and clicks")] = 0,
    users: Annotated[int | None, typer.Option(min=1, help="simulate only the first N users")
                     ] = None,
    url: Annotated[str | None, typer.Option(
        help="drive a running API that already runs this experiment (RECSTACK_AB__*); default: "
             "an in-process API on the stack's Redis and MLflow")] = None,
    promote: Annotated[bool, typer.Option(
        help="on a 'promote' decision move @champion to the challenger (registry arms)")] = True,
    mlflow: Annotated[bool, typer.Option(help="log the experiment to MLflow")] = True,
    post_events: Annotated[bool, typer.Option(
        help="post the simulated users' events (with their arm) to POST /events")] = True,
) -> None:
    """A/B test the challenger against the champion on simulated users; report and decide.

    Per-arm CTR with confidence intervals, the relative lift, a fixed-horizon z-test on the
    users' ratio CTR with a power calculation, a sample-ratio-mismatch check and guardrails
    (p99 latency, error rate, coverage); then promote, keep or inconclusive. Writes
    $RECSTACK_HOME/reports/ab-<stamp>/ and an MLflow run in <experiment>-online.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from app.experiments.online.run import run_ab
    from app.experiments.online.simulate import is_policy

    s = _settings()
    unit = "days" if is_policy(challenger) else "requests"
    try:
        with Progress(TextColumn("[bold]A/B"), BarColumn(), MofNCompleteColumn(),
                      TextColumn(unit), console=console, transient=True) as bar:
            task = bar.add_task("ab", total=None)

            def advance(done: int, total: int) -> None:
                if done % 50 == 0 or done == total:
                    bar.update(task, completed=done, total=total)

            out = run_ab(s, challenger, control, sim_days, weight, salt, seed, users, url,
                         promote, mlflow, post_events, advance)
    except Exception as exc:
        console.print(f"[red]experiment ab failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    r = out.result
    for arm, a in r["arms"].items():
        console.print(f"{arm:>9}: CTR {a['ctr']:.4f} [{a['ci_low']:.4f}, {a['ci_high']:.4f}] "
                      f"users {a['users']}, impressions {a['impressions']}")
    t = r["test"]
    console.print(f"lift {100 * t['lift']:+.2f}% [{100 * t['lift_ci_low']:+.2f}%, "
                  f"{100 * t['lift_ci_high']:+.2f}%], p = {t['p_value']:.3g}; SRM p = "
                  f"{r['srm']['p_value']:.3g}; power {r['power']['achieved']:.2f}")
    console.print(f"[bold]decision: {r['decision']}[/bold] ({r['reason']})")
    if out.promoted:
        console.print(f"promoted to champion: {out.promoted}")
    console.print(f"report: {out.folder / 'report.md'}"
                  + (f"; MLflow run {out.mlflow_run_id}" if out.mlflow_run_id else ""))


def aa(
    runs: Annotated[int, typer.Option(min=2, max=5000, help="seeded A/A experiments")] = 200,
    sim_days: Annotated[int, typer.Option(min=1, max=30)] = 3,
    policy: Annotated[str, typer.Option(help="the policy in both arms")] = "policy:logging",
) -> None:
    """A/A calibration: the same policy in both arms, N times (a new salt and seed each); prints
    the false-positive rate of the A/B test at RECSTACK_AB__ALPHA."""
    from app.experiments.online.aa import aa_false_positive_rate
    from app.experiments.online.run import load_world

    s = _settings()
    world = load_world(s)
    with console.status(f"{runs} A/A experiments"):
        out = aa_false_positive_rate(world, s.ab, runs, sim_days, policy,
                                     list_size=s.sim.list_size)
    console.print(f"A/A: {out['false_positives']} of {runs} runs significant at alpha = "
                  f"{s.ab.alpha:g}: false-positive rate {out['rate']:.3f} "
                  f"(95% CI {out['ci_low']:.3f} to {out['ci_high']:.3f}); SRM alarms "
                  f"{out['srm_alarms']}")


def shadow(
    challenger: Annotated[str, typer.Option(
        help="the shadow arm: a ranker version (7) or an alias (challenger)")] = "challenger",
    sim_days: Annotated[int, typer.Option(min=1, max=30, help="simulated days per pass")] = 1,
    users: Annotated[int | None, typer.Option(min=1, help="simulate only the first N users")
                     ] = None,
) -> None:
    """The latency cost of shadow scoring: served p50/p99 without and with the challenger in
    the shadow (in-process API on the stack's Redis and MLflow), the shadow's own latency,
    drops and overlap with the served lists. Writes $RECSTACK_HOME/reports/shadow-<stamp>/."""
    from app.experiments.online.run import load_world
    from app.experiments.online.shadow import shadow_cost, write_shadow_report

    s = _settings()
    try:
        with console.status("two passes: without, then with the shadow arm"):
            out = shadow_cost(s, challenger, load_world(s), sim_days, users)
        folder = write_shadow_report(s, out)
    except Exception as exc:
        console.print(f"[red]experiment shadow failed:[/red] {exc}")
        raise typer.Exit(1) from exc
    for mode in ("off", "shadow"):
        m = out[mode]
        console.print(f"served, shadow {mode:>6}: {m['requests']} requests, p50 "
                      f"{m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms")
    if "shadow_arm" in out:
        a = out["shadow_arm"]
        console.print(f"shadow arm: scored {a['scored']}, dropped {a['dropped']}, failed "
                      f"{a['failed']}; p50 {a['p50_ms']:.1f} ms, p99 {a['p99_ms']:.1f} ms; "
                      f"overlap with served lists {a['mean_overlap']:.2f}")
    console.print(f"report: {folder / 'report.md'}")
