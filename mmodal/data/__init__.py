"""Dataset readers and writers: the mmodal folder format, COCO captions and VQAv2."""
