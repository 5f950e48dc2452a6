"""Scoring photo collections: discovery, decoding, EXIF, batched scoring and its cache, reports,
bursts, XMP sidecars and the photographer's own ratings.
"""
