"""apm.backend"""
