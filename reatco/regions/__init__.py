"""Regions: where each object of an edit must appear, per frame.

region.py: Region, parsing boxes/keyframes/masks, masks on a grid; files.py: boxes files and the
written regions; finding.py and detector.py: regions found in the source video; objects.py: a
user's object resolved once; settings.py: the objects' schema and checks.
"""
