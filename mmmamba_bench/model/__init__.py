"""The HoVLE / mmMamba model family: layers, attention, the Mamba-2 mixer, the holistic embedding, the stack."""
