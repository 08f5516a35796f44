"""RAD, Re-Attentional Diffusion: steer each word's cross-attention into its region (the paper's §3.2).

losses.py: the pure tensor math; attention_maps.py: recording the read layers; guidance.py: the
RAD pass of one edit; anchoring.py: copying an object's best frame; settings.py: the `rad:` section.
"""
