"""Studies, each writing a report folder: zero-shot, few-shot (with EG/AG against FNO) and scaling laws."""
