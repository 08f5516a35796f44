"""IRJS, Invariant Region Joint Sampling: keep everything outside the regions from the source (§3.3).

blend.py: the blend and its masks; region_noise.py: the start noise that moves with a region;
decoding.py: decoding with the source's statistics and pixels; settings.py: the `irjs:` section.
"""
