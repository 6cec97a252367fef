#!/usr/bin/env python3
"""The peers of `examples/bench_zdt.rs`: pymoo 0.6.2's NSGA2 with its defaults and (when
it imports) pygmo's nsga2 with pymoo-like settings, on ZDT1-3 (n=30), population 100,
200 generations, one thread. Writes, per framework, problem and seed: wall time of the
run and the final non-dominated objective vectors (the Rust side computes every
indicator the same way for everyone), plus pymoo's own HV as a cross-check.

usage: bench_peers.py OUT.json SEEDS GENERATIONS
"""

import json
import os
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.indicators.hv import HV
from pymoo.optimize import minimize
from pymoo.problems import get_problem


def non_dominated(F):
    keep = []
    for i, a in enumerate(F):
        if not any(np.all(b <= a) and np.any(b < a) for j, b in enumerate(F) if j != i):
            keep.append(a)
    return np.unique(np.array(keep), axis=0)


def run_pymoo(name, seed, generations):
    problem = get_problem(name, n_var=30)
    started = time.perf_counter()
    result = minimize(problem, NSGA2(pop_size=100), ("n_gen", generations), seed=seed, verbose=False)
    elapsed = time.perf_counter() - started
    front = non_dominated(result.F)
    return elapsed, front, float(HV(ref_point=np.array([1.1, 1.1]))(front))


def run_pygmo(pg, name, seed, generations):
    number = {"zdt1": 1, "zdt2": 2, "zdt3": 3}[name]
    problem = pg.problem(pg.zdt(prob_id=number, param=30))
    algorithm = pg.algorithm(pg.nsga2(gen=generations, cr=0.9, eta_c=15.0, m=1.0 / 30, eta_m=20.0, seed=seed))
    started = time.perf_counter()
    population = pg.population(problem, size=100, seed=seed)
    population = algorithm.evolve(population)
    elapsed = time.perf_counter() - started
    return elapsed, non_dominated(population.get_f()), None


def main():
    out, seeds, generations = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    try:
        import pygmo as pg
    except Exception as error:  # pygmo has no wheel for some platforms
        print(f"pygmo unavailable: {error}", file=sys.stderr)
        pg = None
    report = {}
    frameworks = [("pymoo", lambda n, s: run_pymoo(n, s, generations))]
    if pg is not None:
        frameworks.append(("pygmo", lambda n, s: run_pygmo(pg, n, s, generations)))
    for framework, run in frameworks:
        for name in ["zdt1", "zdt2", "zdt3"]:
            runs = []
            for seed in range(1, seeds + 1):
                elapsed, front, hv = run(name, seed)
                runs.append({"seed": seed, "seconds": elapsed, "front": front.tolist(), "own_hv": hv})
            report.setdefault(framework, {})[name] = runs
            print(f"{framework} {name}: {np.mean([r['seconds'] for r in runs]):.3f} s a run", file=sys.stderr)
    with open(out, "w") as f:
        json.dump(report, f)


if __name__ == "__main__":
    main()
