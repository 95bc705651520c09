"""The simulated sales organisation: a generative world with hidden ground truth, and policy replay."""
