"""The runner's bookkeeping without subprocesses: stage times across invocations of one experiment."""

from pathlib import Path

from verl.pipeline import runner
from verl.pipeline.plan import Step, TargetPlan


def _step(name: str, kind: str, tmp: Path) -> Step:
    return Step(name=name, kind=kind, title=name, run_dir=tmp / name, cmd=[], inputs={}, output="", config={},
                marker=tmp / name / ".done", log=tmp / name / "run.log")


class _Planner:
    """Plans the given steps; a step is done once the fake run_step has run it."""

    def __init__(self, steps: list[Step]):
        self.steps, self.ran = steps, set()

    def plan_target(self, target: str) -> TargetPlan:
        for st in self.steps:
            st.done = st.name in self.ran
        return TargetPlan(target, Path("."), self.steps)


def test_an_evaluation_adds_its_seconds_to_earlier_invocations_and_training_replaces(tmp_path, monkeypatch):
    planner = _Planner([_step("seed1/ga", "baseline", tmp_path), _step("seed1/eval", "eval", tmp_path)])
    seconds = {"seed1/ga": 30.0, "seed1/eval": 50.0}

    def fake_run_step(step, env):
        planner.ran.add(step.name)
        return seconds[step.name]

    monkeypatch.setattr(runner, "run_step", fake_run_step)
    times: dict[str, float] = {}
    # an earlier invocation trained ga once (120 s) and evaluated RS and RULE in this seed (60 s)
    runner.run_target(planner, "t", {}, times, earlier={"seed1/ga": 120.0, "seed1/eval": 60.0})
    assert times == {"seed1/ga": 30.0, "seed1/eval": 110.0}
    assert runner.run_target(planner, "t", {}, {}).steps[0].done  # nothing left to run
