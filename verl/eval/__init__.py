"""One evaluator for RS checkpoints, baselines and ReBO checkpoints: ``python -m verl.eval`` (see cli.py).

Modules: generation (batched greedy generation, log-prob scoring), metrics (ROUGE-L, F1, entropy, MIA, AUC,
PrivLeak), rwku (the RWKU protocol), muse (MUSE-Books), naturalness / robustness (suites), report / plots.
Nothing heavy is imported here, so ``import verl.eval`` stays cheap.
"""
