"""The networks a ReAtCo edit drives (backbones): what a denoising step needs from a model."""
