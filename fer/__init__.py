"""Facial expression recognition: face detection, FER2013 / JAFFE / CK+ loaders, CNN and ResNet50 models."""
