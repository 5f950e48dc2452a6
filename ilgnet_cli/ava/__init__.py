"""The AVA dataset: records (AVA.txt), download and safe extraction, partitions, the 256x256 cache.
"""
