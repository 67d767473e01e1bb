"""stream2llm"""
