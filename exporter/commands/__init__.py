"""The workstation side's commands (PyTorch): models, digits, train, finetune, export, check, demo."""
