"""apm.metrics"""
