"""glare_core: GLARE (Global, Local And Regional Enforcement) continual self-supervised pre-training.

One concept per module:

========================  ===========================================================
``backbone``              timm ViT wrapper: [CLS], patch tokens, grid, [CLS] attention
``uniadapter``            UniAdapter (the weights GLARE trains)
``lora``                  LoRA, the low-rank alternative
``tuning``                adapter / LoRA / full fine-tuning switch, parameter counts
``weights``               named base models (hub, local files, the offline DINOv2)
``onnx_convert``          the offline DINOv2 base: ONNX -> timm conversion
``paths``                 where data, weights and runs live
``cli``                   the ``glare`` command line
========================  ===========================================================
"""

__version__ = "0.1.0"
