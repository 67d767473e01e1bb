"""srt_ext"""
