"""Algorithms: training, calibration, evaluation, lowering parameters to a program, mmfree.load."""
