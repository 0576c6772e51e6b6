"""Audio-visual emotion recognition: decoding (media), caching (preprocess), tf.data (pipeline), the joint
model (models), distributed training (train), late fusion of ser + fer (late) and prediction (predict)."""
