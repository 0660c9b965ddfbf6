"""The PyTorch sink behind ``data_workers.torch.Loader``."""
