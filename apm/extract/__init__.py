"""apm.extract"""
