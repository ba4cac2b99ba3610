"""Datasets: the mmodal folder format (readers, writers, the Shapes generator that writes it), COCO captions and
VQAv2, and decoding files for indexing. Builds on the Shapes world (`mmodal.shapes`), never the reverse."""
