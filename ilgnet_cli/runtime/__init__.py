"""The lowest layer: where things live on disk, the device and processes a run uses, the number
format the model runs in, one forward pass, atomic files, downloads and how untrusted text is
shown. Nothing here knows ILGNet; every other part of the package may use it.
"""
