"""Deployment files: the nginx template (nginx.conf) and its renderer (nginx_conf.py)."""
