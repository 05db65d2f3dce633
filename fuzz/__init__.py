"""Coverage-guided fuzzing of every parser that reads bytes someone else wrote (atheris/libFuzzer).

:mod:`fuzz.targets` holds one harness per parser and states what it may raise; :mod:`fuzz.worker` runs
one harness under atheris; :mod:`fuzz.run` (``make fuzz``) runs them all and reports inputs per target.
``fuzz/corpus/<target>/`` keeps the inputs that found new coverage; ``tests/fuzz`` replays them.
"""
