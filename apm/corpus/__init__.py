"""apm.corpus"""
