"""Our tabletop as other harnesses' benchmarks (optional extras).

Modules:
    tabletop    ``TabletopBenchmark``: a vla-eval ``StepBenchmark`` (``pip install 'roboflamingo[vla-eval]'``),
                import string ``roboflamingo.benchmarks.tabletop:TabletopBenchmark``
"""
