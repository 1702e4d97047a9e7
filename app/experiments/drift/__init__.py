"""The drift experiment (taste shift, retraining on and off) and the data-bug experiment."""
