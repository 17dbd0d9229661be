"""apm.features"""
