"""Training and evaluation: the training loop and recipes, evaluation with honest metrics and its
report, learning a photographer's taste, and torchrun/DDP.
"""
