"""
Routes from MMIB onto other engines: `mmib.integrations.ray` (Ray Data batch inference, `pip install "mmib[ray]"`)
and `mmib.integrations.endpoints` (the `handler.py` of Inference Endpoints saved with every checkpoint).

Installed only (not remote code); each module imports its engine when it is imported, so `import mmib` never needs
Ray.
"""
