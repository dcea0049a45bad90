"""Adaptation toolkit: move a picker to a new region and measure what that bought.

datasets   TraceSet; npz and SeisBench folders in, SeisBench out; event splits; validation
archive    waveform sources for building data sets: SDS tree, miniSEED folder, FDSN service
catalog    analyst picks from QuakeML / SeisComP XML, unusable ones counted by cause
build      picks + archive → SeisBench training folder + build report (`rtpick dataset build`)
pseudo     a teacher's confident picks as labels (continuous data, or relabelled trace sets)
velocity   1D layered model (.nd) and first-arrival times for the simulator
simulate   domain-shift synthetics (Brune source, Q, site, real regional noise); presets
finetune   strategies full / frozen-encoder / frozen-k / discriminative on SeisBench's generate pipeline
evaluate   window protocol, P/S precision/recall/F1, residuals, SNR and magnitude bins, plots
student    TinyPhaseNet, the small student model
distill    teacher→student training (teacher probabilities + labels); CPU throughput
models     load by spec; save SeisBench weights + sidecar + model card
workflow   the steps behind `rtpick adapt` and `rtpick distill`
"""
