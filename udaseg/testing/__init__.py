"""Fixtures shared by the tests and the benchmarks (bench/, `make gpu-check`): tiny datasets in the
real on-disk formats (`fakedata`) and the adversarial maps and scipy reference of the spatial-prior
refinement (`refine_cases`). Not used by the stages; here so bench/ imports nothing from tests/."""
