"""Throughput of the referral rules engine on one core.

Run: ``python loadtests/bench_referral_rules.py [--seconds 3]``

Evaluates a mix of clinical scenarios (emergencies, routine up-referrals, skip-level, down-referrals, missing
facts, target suggestion) against the default policy for a bounded time, and measures a trivial function call
with the same signature in the same run, so the figure can be compared across machines: the ratio says how
many trivial calls one evaluation costs. The two are measured in alternating short rounds and the medians
reported, so a busy neighbour on a shared machine moves both alike. Goal: at least 20,000 evaluations per
second.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import date

from referral.policy import load_default_policy
from referral.rules import Decision, FacilityInfo, ReferralRequest, evaluate_referral

TARGET_PER_SECOND = 20_000
TODAY = date(2026, 5, 1)

CENTRES = frozenset({"pci_capable", "stroke_centre", "trauma_centre", "maternal_critical_care"})
VILLAGE = FacilityInfo("v1", "村卫生室", "village", frozenset(), 24.80, 113.60, "t1")
TOWNSHIP = FacilityInfo("t1", "镇卫生院", "township", frozenset(), 24.85, 113.65, "c1")
TOWNSHIP_2 = FacilityInfo("t2", "镇卫生院2", "township", frozenset(), 24.70, 113.50, "c1")
COUNTY = FacilityInfo("c1", "县人民医院", "county", CENTRES, 24.95, 113.75, None)
COUNTY_TCM = FacilityInfo("c2", "县中医院", "county", frozenset({"tcm"}), 24.76, 113.56, None)
CITY = FacilityInfo("m1", "市中心医院", "city", CENTRES | {"tcm"}, 25.30, 114.10, None)
CANDIDATES = (VILLAGE, TOWNSHIP, TOWNSHIP_2, COUNTY, COUNTY_TCM, CITY)

STABLE = {"diagnosis_confirmed": True, "plan_suitable_for_primary": True, "stable": True, "complications_stable": True}

SCENARIOS: tuple[ReferralRequest, ...] = (
    ReferralRequest(VILLAGE, COUNTY, ("I10",), None, {"bp_sys": 150, "bp_dia": 95, "stable": False}, None),
    ReferralRequest(
        VILLAGE, COUNTY, ("I10",), "routine", {"bp_sys": 185, "bp_dia": 115, "severe_headache": True}, None
    ),
    ReferralRequest(VILLAGE, COUNTY_TCM, ("I21.0",), None, {}, None),
    ReferralRequest(VILLAGE, None, ("I21.9",), None, {}, None),
    ReferralRequest(COUNTY, TOWNSHIP, ("I69.3",), None, STABLE, None),
    ReferralRequest(TOWNSHIP, COUNTY, ("E11.9",), None, {"pregnant": True}, None),
    ReferralRequest(VILLAGE, TOWNSHIP, ("I10",), None, {"severe_headache": True, "stable": True}, None),
    ReferralRequest(VILLAGE, COUNTY, ("I63.9",), None, {"onset_minutes": 120}, None),
    ReferralRequest(TOWNSHIP, COUNTY, ("I10",), None, {"n_antihypertensives": 3, "bp_at_target": False}, None),
    ReferralRequest(VILLAGE, COUNTY, ("J44.1",), None, {"spo2": 85, "rr": 26}, None),
    ReferralRequest(
        COUNTY, VILLAGE, ("I10",), None, {**STABLE, "long_term_plan_set": True, "bp_at_target": True}, None
    ),
    ReferralRequest(VILLAGE, COUNTY, ("I10",), None, {"stable": False}, "家属要求到县医院诊治"),
)


def _baseline(
    policy: object, request: ReferralRequest, *, candidates: Sequence[FacilityInfo], today: date
) -> ReferralRequest:
    """The cheapest call with the engine's signature: the unit the ratio is expressed in."""
    return request


def _rate(call: Callable[[ReferralRequest], object], seconds: float) -> tuple[float, int]:
    """Calls per second over the scenario mix, checking the clock once per pass so timing stays out of it."""
    requests = SCENARIOS * 20
    count = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for request in requests:
            call(request)
        count += len(requests)
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - start), count


def _pin_to_one_core() -> str:
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):  # not Linux, or not permitted: run unpinned
        return "unpinned"
    return f"cpu {cpu}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="measuring time of each side (default 3)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds per side (default 6)")
    args = parser.parse_args()
    seconds = max(0.2, min(args.seconds, 60.0))
    rounds = max(1, min(args.rounds, 100))
    pinned = _pin_to_one_core()

    started = time.perf_counter()
    text = load_default_policy.__wrapped__().model  # compile once outside the cache to time it honestly
    compile_ms = (time.perf_counter() - started) * 1000
    del text
    policy = load_default_policy()
    rules = len(policy.emergency_rules) + len(policy.upward_rules) + len(policy.downward_rules)
    rules += len(policy.lateral_rules)

    def evaluate(request: ReferralRequest) -> Decision:
        return evaluate_referral(policy, request, candidates=CANDIDATES, today=TODAY)

    def baseline(request: ReferralRequest) -> ReferralRequest:
        return _baseline(policy, request, candidates=CANDIDATES, today=TODAY)

    outcomes = sorted({evaluate(r).outcome for r in SCENARIOS})
    _rate(evaluate, min(0.3, seconds))  # warm-up
    eval_rates: list[float] = []
    base_rates: list[float] = []
    eval_count = base_count = 0
    for _ in range(rounds):
        rate, count = _rate(evaluate, seconds / rounds)
        eval_rates.append(rate)
        eval_count += count
        rate, count = _rate(baseline, seconds / rounds)
        base_rates.append(rate)
        base_count += count
    eval_rate = statistics.median(eval_rates)
    base_rate = statistics.median(base_rates)

    print(f"python {platform.python_version()} on {platform.machine()}, {pinned}")
    print(f"policy {policy.version_label}: {rules} rules, compiled in {compile_ms:.1f} ms")
    print(f"scenario mix: {len(SCENARIOS)} requests, outcomes {', '.join(outcomes)}")
    spread = f"{min(eval_rates):,.0f}..{max(eval_rates):,.0f}"
    print(
        f"rules engine : {eval_rate:12,.0f} evaluations/s  median of {rounds} rounds ({spread}; {eval_count:,} in all)"
    )
    print(f"baseline call: {base_rate:12,.0f} calls/s        median of {rounds} rounds ({base_count:,} in all)")
    print(f"ratio        : one evaluation costs {base_rate / eval_rate:,.0f} trivial calls")
    print(f"per call     : {1e6 / eval_rate:.1f} us per evaluation")
    verdict = "meets" if eval_rate >= TARGET_PER_SECOND else "BELOW"
    print(f"target       : {TARGET_PER_SECOND:,} evaluations/s -> {verdict}")


if __name__ == "__main__":
    main()
