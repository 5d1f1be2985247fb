"""Lowering to Intel Loihi 2: integer neuron semantics, programs, emulation, cost (numpy only)."""
