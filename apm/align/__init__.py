"""apm.align"""
