"""Adaptation toolkit: move a picker to a new region and measure what that bought.

datasets   TraceSet; npz and SeisBench folders in, SeisBench out; event splits; validation
velocity   1D layered model (.nd) and first-arrival times for the simulator
simulate   domain-shift synthetics (Brune source, Q, site, real regional noise); presets
finetune   strategies full / frozen-encoder / frozen-k / discriminative on SeisBench's generate pipeline
evaluate   window protocol, P/S precision/recall/F1, residuals, SNR and magnitude bins, plots
student    TinyPhaseNet, the small student model
distill    teacher→student training on unlabelled data; CPU throughput
models     load by spec; save SeisBench weights + sidecar + model card
workflow   the steps behind `rtpick adapt` and `rtpick distill`
"""
