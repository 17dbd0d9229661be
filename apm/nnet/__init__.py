"""apm.nnet"""
