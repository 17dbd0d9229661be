"""apm.data"""
