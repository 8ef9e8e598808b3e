"""Tests run on one torch thread: the CI machine has two cores, and the chapter kernels
(nbval) run in parallel processes of their own."""
import torch

torch.set_num_threads(1)
