"""Serving a bundle past one machine, on engines people already run: Triton model
repositories, DeepStream nvinfer configs and Ray Data batch inference. Torch-free;
Ray and tritonclient are optional and imported only inside the functions that need them."""
