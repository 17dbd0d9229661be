"""apm.losses"""
